# Thin aliases of the README commands (quickstart.sh needs only bash, not make).
.PHONY: train test slow lint
train:
	./quickstart.sh train
test:
	./quickstart.sh test
slow:
	./quickstart.sh test -m slow
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
