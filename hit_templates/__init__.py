"""HIT pages shown to workers: Jinja2 templates (autoescaped) and ``render.py``, which turns them into
MTurk XML (HTMLQuestion verification HITs, QuestionForm qualification tests with their AnswerKey) and
parses the submitted answers back."""
