# Thin aliases of the README commands (quickstart.sh needs only bash, not make).
.PHONY: train test slow lint newest-jax
train:
	./quickstart.sh train
test:
	./quickstart.sh test
slow:
	./quickstart.sh test -m slow
newest-jax:
	.ci/newest_jax
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
