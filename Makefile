# make run   – set up .venv and run hush in the foreground with your policies (the shipped ones if you have none)
# make test  – set up .venv and run the whole test suite
# make lint  – ruff and mypy (what CI runs before the tests)
# make setup – only build .venv

VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.hush-installed

# mitmproxy 12 needs Python >= 3.12; plain python3 may be older (pip then
# silently picks an old mitmproxy), so look for one: $HUSH_PYTHON first, then
# versioned names on PATH, then pyenv's versions.
define FIND_PYTHON
for p in "$$HUSH_PYTHON" python3.14 python3.13 python3.12 \
         $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV) python3; do \
  [ -n "$$p" ] || continue; \
  if command -v "$$p" >/dev/null 2>&1 && "$$p" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then \
    command -v "$$p"; exit 0; fi; \
done; exit 1
endef
export FIND_PYTHON

.PHONY: setup run test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@py=$$(sh -c "$$FIND_PYTHON") || { \
	  echo "hush needs Python >= 3.12 (mitmproxy 12 does not run on older ones)." >&2; \
	  echo "Install one (e.g. 'pyenv install 3.12') or set HUSH_PYTHON=/path/to/python3.12." >&2; \
	  exit 1; }; \
	echo "using $$py ($$($$py --version))"; \
	if [ -x $(BIN)/python ] && ! $(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then rm -rf $(VENV); fi; \
	[ -x $(BIN)/python ] || $$py -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	@touch $(STAMP)

run: setup
	$(BIN)/hush run $(ARGS)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# mypy checks the installed names (hush.daemon, hush.addons): .lint/hush is a
# tree of symlinks to the design card's folders
lint: setup
	$(BIN)/ruff check .
	@mkdir -p .lint/hush && touch .lint/hush/__init__.py && \
	  for d in daemon addons; do ln -sfn ../../$$d .lint/hush/$$d; done
	cd .lint && ../$(BIN)/mypy --config-file ../pyproject.toml -p hush.daemon -p hush.addons

clean:
	rm -rf $(VENV) *.egg-info .lint
