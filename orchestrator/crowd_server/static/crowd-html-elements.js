/*
 * labelprop crowd server: an offline drop-in for Crowd HTML Elements
 * (https://assets.crowd.aws/crowd-html-elements.js), enough for labelprop's HITs.
 *
 * <crowd-form> behaves as on MTurk: it wraps its content in a form, adds a Submit
 * button unless one is present, and on submit posts two fields to
 * <turkSubmitTo>/mturk/externalSubmit: `assignmentId` and `taskAnswers`, a JSON
 * array holding one object of name/value pairs.  MTurk then stores a single Answer
 * whose QuestionIdentifier is `taskAnswers`.  In preview
 * (assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE) submitting is disabled.
 *
 * Values: native <input>/<select>/<textarea>: the value (checked radios only;
 * checkboxes: true/false, or a list of checked values when they carry a value
 * attribute); <crowd-input>, <crowd-text-area>: the value; <crowd-radio-button>,
 * <crowd-checkbox>: {"on": true|false}; <crowd-classifier>: {"label": chosen}.
 * Also provided: <crowd-button>, <crowd-radio-group>, <crowd-instructions>,
 * <crowd-alert>, <crowd-card>.  Unknown crowd-* elements render their children.
 */
(function () {
  'use strict';
  if (window.customElements && window.customElements.get('crowd-form')) return;

  var params = new URLSearchParams(window.location.search);
  var assignmentId = params.get('assignmentId') || '';
  var turkSubmitTo = params.get('turkSubmitTo') || '';
  var isPreview = !assignmentId || assignmentId === 'ASSIGNMENT_ID_NOT_AVAILABLE';

  function whenParsed(fn) {
    if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', fn);
    else fn();
  }

  function submitUrl() {
    return (turkSubmitTo ? turkSubmitTo.replace(/\/+$/, '') : '') + '/mturk/externalSubmit';
  }

  function collect(root) {
    var out = {};
    var els = root.querySelectorAll('input, select, textarea, crowd-input, crowd-text-area, ' +
                                    'crowd-radio-button, crowd-checkbox, crowd-classifier');
    els.forEach(function (el) {
      if (el.closest('[data-crowd-internal]') && !el.matches('crowd-input, crowd-text-area, crowd-radio-button, crowd-checkbox, crowd-classifier')) {
        return; // the native controls our own elements render
      }
      var name = el.getAttribute('name');
      if (!name || el.disabled) return;
      var tag = el.tagName.toLowerCase();
      if (tag === 'crowd-radio-button' || tag === 'crowd-checkbox') {
        out[name] = { on: !!el.checked };
      } else if (tag === 'crowd-classifier') {
        out[name] = { label: el.value || '' };
      } else if (tag === 'crowd-input' || tag === 'crowd-text-area') {
        out[name] = el.value;
      } else if (el.type === 'radio') {
        if (el.checked) out[name] = el.value;
      } else if (el.type === 'checkbox') {
        if (el.hasAttribute('value')) {
          if (!Array.isArray(out[name])) out[name] = [];
          if (el.checked) out[name].push(el.value);
        } else {
          out[name] = el.checked;
        }
      } else if (el.type === 'submit' || el.type === 'button' || el.type === 'reset' || el.type === 'file') {
        // not answers
      } else if (tag === 'select' && el.multiple) {
        out[name] = Array.prototype.filter.call(el.options, function (o) { return o.selected; })
          .map(function (o) { return o.value; });
      } else {
        out[name] = el.value;
      }
    });
    return out;
  }

  function post(fields) {
    var f = document.createElement('form');
    f.method = 'POST';
    f.action = submitUrl();
    f.style.display = 'none';
    Object.keys(fields).forEach(function (k) {
      var i = document.createElement('input');
      i.type = 'hidden';
      i.name = k;
      i.value = fields[k];
      f.appendChild(i);
    });
    document.body.appendChild(f);
    HTMLFormElement.prototype.submit.call(f);
  }

  class CrowdForm extends HTMLElement {
    connectedCallback() {
      var self = this;
      whenParsed(function () { self._init(); });
    }
    _init() {
      if (this._form) return;
      var form = document.createElement('form');
      form.className = 'crowd-form';
      form.noValidate = false;
      while (this.firstChild) form.appendChild(this.firstChild);
      this.appendChild(form);
      this._form = form;
      var hasSubmit = form.querySelector('crowd-button[form-action="submit"], button[type="submit"], input[type="submit"]');
      if (!hasSubmit) {
        var b = document.createElement('button');
        b.type = 'submit';
        b.id = 'submitButton';
        b.textContent = 'Submit';
        b.className = 'crowd-submit';
        var p = document.createElement('p');
        p.appendChild(b);
        form.appendChild(p);
      }
      if (isPreview) {
        form.querySelectorAll('button[type="submit"], input[type="submit"]').forEach(function (b) {
          b.disabled = true;
          b.title = 'You must ACCEPT the HIT before you can submit the results.';
        });
      }
      var self = this;
      form.addEventListener('submit', function (e) { e.preventDefault(); self.submit(); });
      this.dispatchEvent(new CustomEvent('crowd-form-ready', { bubbles: true }));
    }
    get form() { return this._form; }
    submit() {
      if (isPreview) { alert('You must ACCEPT the HIT before you can submit the results.'); return false; }
      if (this._submitted) return false;
      if (this._form && this._form.reportValidity && !this._form.reportValidity()) return false;
      var ev = new CustomEvent('submit', { cancelable: true });
      // MTurk lets task code veto: crowd-form dispatches 'submit' on itself first.
      if (!this.dispatchEvent(ev)) return false;
      this._submitted = true;
      post({ assignmentId: assignmentId, taskAnswers: JSON.stringify([collect(this._form || this)]) });
      return true;
    }
  }

  class CrowdButton extends HTMLElement {
    connectedCallback() {
      var self = this;
      whenParsed(function () {
        if (self._b) return;
        var b = document.createElement('button');
        b.type = self.getAttribute('form-action') === 'submit' ? 'submit' : 'button';
        if (b.type === 'submit') b.id = self.id ? self.id + '-button' : 'submitButton';
        while (self.firstChild) b.appendChild(self.firstChild);
        if (!b.textContent.trim()) b.textContent = 'Submit';
        if (self.hasAttribute('disabled')) b.disabled = true;
        self.setAttribute('data-crowd-internal', '');
        self.appendChild(b);
        self._b = b;
      });
    }
  }

  var groupCounter = 0;
  class CrowdRadioGroup extends HTMLElement {
    connectedCallback() { if (!this._gid) this._gid = 'crowd-radio-group-' + (++groupCounter); }
  }

  function labelled(self, type) {
    var label = document.createElement('label');
    label.className = 'crowd-choice';
    var input = document.createElement('input');
    input.type = type;
    if (type === 'radio') {
      var group = self.closest('crowd-radio-group');
      if (group && !group._gid) group._gid = 'crowd-radio-group-' + (++groupCounter);
      input.name = group ? group._gid : 'crowd-radio-' + (++groupCounter);
    }
    if (self.hasAttribute('checked')) input.checked = true;
    if (self.hasAttribute('disabled')) input.disabled = true;
    var text = document.createElement('span');
    while (self.firstChild) text.appendChild(self.firstChild);
    label.appendChild(input);
    label.appendChild(document.createTextNode(' '));
    label.appendChild(text);
    self.setAttribute('data-crowd-internal', '');
    self.appendChild(label);
    return input;
  }

  class CrowdRadioButton extends HTMLElement {
    connectedCallback() { var s = this; whenParsed(function () { if (!s._i) s._i = labelled(s, 'radio'); }); }
    get checked() { return this._i ? this._i.checked : this.hasAttribute('checked'); }
    set checked(v) { if (this._i) this._i.checked = !!v; }
    get value() { return this.getAttribute('value') || ''; }
  }

  class CrowdCheckbox extends HTMLElement {
    connectedCallback() { var s = this; whenParsed(function () { if (!s._i) s._i = labelled(s, 'checkbox'); }); }
    get checked() { return this._i ? this._i.checked : this.hasAttribute('checked'); }
    set checked(v) { if (this._i) this._i.checked = !!v; }
  }

  function makeField(self, tagName) {
    var wrap = document.createElement('label');
    wrap.className = 'crowd-field';
    if (self.getAttribute('label')) {
      var l = document.createElement('span');
      l.textContent = self.getAttribute('label') + ' ';
      wrap.appendChild(l);
    }
    var f = document.createElement(tagName);
    ['type', 'placeholder', 'value', 'max-length', 'min', 'max', 'step', 'rows', 'pattern'].forEach(function (a) {
      if (self.hasAttribute(a)) f.setAttribute(a === 'max-length' ? 'maxlength' : a, self.getAttribute(a));
    });
    if (self.hasAttribute('required')) f.required = true;
    if (self.hasAttribute('disabled')) f.disabled = true;
    if (self.hasAttribute('autofocus')) f.autofocus = true;
    if (tagName === 'textarea' && self.hasAttribute('value')) f.value = self.getAttribute('value');
    wrap.appendChild(f);
    self.setAttribute('data-crowd-internal', '');
    self.appendChild(wrap);
    if (self.hasAttribute('autofocus')) setTimeout(function () { f.focus(); }, 0);
    return f;
  }

  class CrowdInput extends HTMLElement {
    connectedCallback() { var s = this; whenParsed(function () { if (!s._f) s._f = makeField(s, 'input'); }); }
    get value() { return this._f ? this._f.value : (this.getAttribute('value') || ''); }
    set value(v) { if (this._f) this._f.value = v; }
  }

  class CrowdTextArea extends HTMLElement {
    connectedCallback() { var s = this; whenParsed(function () { if (!s._f) s._f = makeField(s, 'textarea'); }); }
    get value() { return this._f ? this._f.value : (this.getAttribute('value') || ''); }
    set value(v) { if (this._f) this._f.value = v; }
  }

  class CrowdClassifier extends HTMLElement {
    connectedCallback() {
      var s = this;
      whenParsed(function () {
        if (s._built) return;
        s._built = true;
        var cats = [];
        try { cats = JSON.parse((s.getAttribute('categories') || '[]').replace(/'/g, '"')); } catch (e) { cats = []; }
        var header = document.createElement('h3');
        header.textContent = s.getAttribute('header') || '';
        var box = document.createElement('div');
        box.className = 'crowd-classifier-choices';
        var gid = 'crowd-classifier-' + (++groupCounter);
        s._inputs = cats.map(function (c, i) {
          var label = document.createElement('label');
          label.className = 'crowd-choice';
          var input = document.createElement('input');
          input.type = 'radio';
          input.name = gid;
          input.value = c;
          label.appendChild(input);
          label.appendChild(document.createTextNode(' ' + (i < 9 ? '[' + (i + 1) + '] ' : '') + c));
          box.appendChild(label);
          return input;
        });
        s.setAttribute('data-crowd-internal', '');
        s.insertBefore(box, s.firstChild);
        s.insertBefore(header, s.firstChild);
      });
    }
    get value() {
      var c = (this._inputs || []).filter(function (i) { return i.checked; })[0];
      return c ? c.value : '';
    }
  }

  class CrowdInstructions extends HTMLElement {
    connectedCallback() {
      var s = this;
      whenParsed(function () {
        if (s._d) return;
        var d = document.createElement('details');
        var sum = document.createElement('summary');
        sum.textContent = s.getAttribute('link-text') || 'Instructions';
        d.appendChild(sum);
        while (s.firstChild) d.appendChild(s.firstChild);
        s.appendChild(d);
        s._d = d;
      });
    }
  }

  class CrowdPassThrough extends HTMLElement {}

  customElements.define('crowd-form', CrowdForm);
  customElements.define('crowd-button', CrowdButton);
  customElements.define('crowd-radio-group', CrowdRadioGroup);
  customElements.define('crowd-radio-button', CrowdRadioButton);
  customElements.define('crowd-checkbox', CrowdCheckbox);
  customElements.define('crowd-input', CrowdInput);
  customElements.define('crowd-text-area', CrowdTextArea);
  customElements.define('crowd-classifier', CrowdClassifier);
  customElements.define('crowd-instructions', CrowdInstructions);
  ['crowd-alert', 'crowd-card', 'crowd-badge', 'crowd-icon-button', 'crowd-toast', 'crowd-modal',
   'crowd-tabs', 'crowd-tab', 'crowd-fab', 'crowd-slider', 'crowd-keypoint'].forEach(function (n) {
    customElements.define(n, class extends CrowdPassThrough {});
  });

  window.crowd = { isPreview: isPreview, assignmentId: assignmentId, collectAnswers: collect };
})();
