"""The interop tests run in .venv-interop (see .ci/interop-venv.sh) with tests/conftest.py's fixtures:
tiny random checkpoints (`checkpoint_factory`) and their exports (`exported_factory`), each built
once per session."""
