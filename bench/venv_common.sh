# Shared by the bench set-up scripts (sourced, not run): the torch pin, the up-to-date check,
# venv creation and actlab's own requirements read from pyproject.toml.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH="torch==2.13.0"              # pinned: pip takes the CPU build; unpinned pulls a CUDA build

# exit_if_fresh STAMP LABEL SCRIPT: stop the calling script when STAMP is newer than it and pyproject.toml.
exit_if_fresh() {
    if [[ -f "$1" && "$1" -nt "$3" && "$1" -nt "$ROOT/pyproject.toml" ]]; then
        echo "$2 up to date: $(dirname "$1")"
        exit 0
    fi
}

# new_venv VENV: create it if needed, set PIP, install the pinned torch first.
new_venv() {
    test -x "$1/bin/python" || "$PYTHON" -m venv "$1"
    PIP=("$1/bin/python" -m pip --disable-pip-version-check -q)
    "${PIP[@]}" install "$TORCH"
}

# read_actlab_deps VENV: actlab's [project] dependencies into the array ACTLAB_DEPS.
read_actlab_deps() {
    mapfile -t ACTLAB_DEPS < <("$1/bin/python" -c "import tomllib; print('\n'.join(tomllib.load(open('$ROOT/pyproject.toml', 'rb'))['project']['dependencies']))")
}

# expect_pip_check VENV [ALLOWED]: print `pip check`; exit 1 on any complaint not matching the
# grep pattern ALLOWED (a clean venv says "No broken requirements found.").
expect_pip_check() {
    local check bad
    check="$("$1/bin/python" -m pip check 2>&1 || true)"
    echo "$check"
    bad="$(grep -v '^No broken requirements' <<<"$check" | grep -v "${2:-^\$}" || true)"
    if [[ -n "$bad" ]]; then
        echo "unexpected dependency problems (see above)" >&2
        exit 1
    fi
}
