# The two commands of the README. Both install into .venv (made with the system's /usr/bin/python3,
# so that the PostgreSQL server's OS user can run it later for archive_command).
PYTHON ?= /usr/bin/python3
VENV := .venv

.PHONY: install demo test unit faults lint config-docs man clean

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# compat: a plain path in a .pth file, not setuptools' import hook, which costs ~20 ms at every interpreter
	# start, i.e. on every `backupctl wal-push` that PostgreSQL's archiver runs
	$(VENV)/bin/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/python -m backupctl.demo

test: install
	$(VENV)/bin/ruff check backupctl tests bench
	$(VENV)/bin/pytest -q

unit: install  # the pure tests alone: no servers, no temp dirs, seconds
	$(VENV)/bin/pytest -q tests/unit

faults: install  # the fault-injection suite alone, with more trials (README: How we test failure)
	BACKUPCTL_FAULT_TRIALS=$${BACKUPCTL_FAULT_TRIALS:-200} BACKUPCTL_FAULT_ROUNDS=$${BACKUPCTL_FAULT_ROUNDS:-2} \
		$(VENV)/bin/pytest -q tests/integration/test_faults_*.py

lint: install
	$(VENV)/bin/ruff check backupctl tests bench

config-docs: install  # the README's config reference, written from the schema (backupctl/core/config.py)
	$(VENV)/bin/python -m backupctl.core.config_docs --write-readme
	$(VENV)/bin/python -m backupctl.core.config_docs --check

man: install  # man/backupctl.1, written from the click commands (backupctl/cli/manpage.py); checked in
	$(VENV)/bin/python -m backupctl.cli.manpage > man/backupctl.1

clean:
	rm -rf $(VENV) .demo .pytest_cache
