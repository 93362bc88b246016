/*
 * labelprop crowd server: an offline copy of MTurk's classic helper
 * (https://s3.amazonaws.com/mturk-public/externalHIT_v1.js).
 * turkSetAssignmentID() puts the assignmentId into #assignmentId, points
 * #mturk_form at <turkSubmitTo>/mturk/externalSubmit and, in preview, disables
 * #submitButton.
 */
function turkGetParam(name, defaultValue) {
  var regexS = "[\\?&]" + name + "=([^&#]*)";
  var regex = new RegExp(regexS);
  var tmpURL = window.location.href;
  var results = regex.exec(tmpURL);
  if (results == null) { return defaultValue; }
  return decodeURIComponent(results[1].replace(/\+/g, " "));
}

function turkSetAssignmentID() {
  var assignmentID = turkGetParam('assignmentId', "");
  var el = document.getElementById('assignmentId');
  if (el) el.value = assignmentID;
  if (assignmentID == "ASSIGNMENT_ID_NOT_AVAILABLE") {
    var btn = document.getElementById('submitButton');
    if (btn) {
      btn.disabled = true;
      btn.value = "You must ACCEPT the HIT before you can submit the results.";
    }
  }
  var form = document.getElementById('mturk_form');
  if (form) {
    var to = turkGetParam('turkSubmitTo', "");
    form.action = (to ? to.replace(/\/+$/, '') : '') + '/mturk/externalSubmit';
  }
}
