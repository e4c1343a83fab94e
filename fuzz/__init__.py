"""Fuzzing of the codecs: shared targets (``fuzz.targets``) and the atheris runner
(``python -m fuzz``). See docs/fuzzing.md."""
