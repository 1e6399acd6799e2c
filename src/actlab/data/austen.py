"""The `austen` corpus: Jane Austen's six novels from the Debian package `r-cran-janeaustenr`.

The package is fetched with `apt-get download` (no R needed), its lazy-load database is
read with `actlab.data.rserialize`, and each novel is cached as a UTF-8 text file under
`$ACTLAB_HOME/corpora/austen/` beside a `provenance.json`. Split (fixed): `test` is
Persuasion, the last novel; `train` is the other five; `all` is all six.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from actlab.errors import ActlabError, did_you_mean
from actlab.paths import home

PACKAGE = "r-cran-janeaustenr"
RDATA_DIR = "usr/lib/R/site-library/janeaustenr/data"

# (key in the R package, title, file name), in publication order.
NOVELS: list[tuple[str, str, str]] = [
    ("sensesensibility", "Sense & Sensibility", "sense_and_sensibility.txt"),
    ("prideprejudice", "Pride & Prejudice", "pride_and_prejudice.txt"),
    ("mansfieldpark", "Mansfield Park", "mansfield_park.txt"),
    ("emma", "Emma", "emma.txt"),
    ("northangerabbey", "Northanger Abbey", "northanger_abbey.txt"),
    ("persuasion", "Persuasion", "persuasion.txt"),
]
SPLITS: dict[str, list[str]] = {
    "train": [key for key, _, _ in NOVELS[:-1]],
    "test": [NOVELS[-1][0]],
    "all": [key for key, _, _ in NOVELS],
}


def austen_dir() -> Path:
    """Where the cached novels live."""
    return home() / "corpora" / "austen"


def _cached(folder: Path) -> bool:
    return (folder / "provenance.json").is_file() and all((folder / f).is_file() for _, _, f in NOVELS)


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True)
    except FileNotFoundError as exc:
        raise ActlabError(
            f"the austen corpus needs `{cmd[0]}` (a Debian/Ubuntu system) to fetch {PACKAGE}"
        ) from exc
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr or exc.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise ActlabError(f"`{' '.join(cmd)}` failed: {last[0]}") from exc


def _download_deb(workdir: Path) -> Path:
    _run(["apt-get", "download", PACKAGE], workdir)
    debs = sorted(workdir.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        raise ActlabError(f"`apt-get download {PACKAGE}` produced no .deb file")
    return debs[-1]


def _deb_field(deb: Path, name: str, workdir: Path) -> str:
    return _run(["dpkg-deb", "-f", str(deb), name], workdir).stdout.strip()


def fetch_austen(force: bool = False) -> Path:
    """Download and unpack the novels once; return the cache folder holding them."""
    from actlab.data.rserialize import read_lazyload

    target = austen_dir()
    if _cached(target) and not force:
        return target
    with tempfile.TemporaryDirectory(prefix="actlab-austen-") as tmp:
        work = Path(tmp)
        deb = _download_deb(work)
        _run(["dpkg-deb", "-x", str(deb), str(work / "x")], work)
        rdata = work / "x" / RDATA_DIR
        variables = read_lazyload(rdata / "Rdata.rdb", rdata / "Rdata.rdx")
        staging = work / "austen"
        staging.mkdir()
        novels = []
        for key, title, filename in NOVELS:
            if key not in variables:
                raise ActlabError(f"{PACKAGE}: novel '{key}' missing (found {sorted(variables)})")
            lines = variables[key].values
            text = "\n".join("" if line is None else line for line in lines)
            (staging / filename).write_text(text, encoding="utf-8")
            novels.append({"key": key, "title": title, "file": filename, "chars": len(text), "lines": len(lines)})
        provenance = {
            "corpus": "austen",
            "source": f"Debian package {PACKAGE}",
            "package": _deb_field(deb, "Package", work),
            "version": _deb_field(deb, "Version", work),
            "deb_file": deb.name,
            "deb_sha256": hashlib.sha256(deb.read_bytes()).hexdigest(),
            "licence": "MIT (package); the novels are public domain",
            "text": "lines joined with '\\n', NA lines empty; one document per novel",
            "novels": novels,
            "splits": SPLITS,
        }
        (staging / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(target))
    return target


def load_austen(split: str = "all") -> tuple[list[str], dict[str, Any]]:
    """The novels of a split (publication order) and the provenance, split included."""
    if split not in SPLITS:
        hint = did_you_mean(split, SPLITS)
        raise ActlabError(f"unknown austen split '{split}'{hint}: use one of {', '.join(SPLITS)}")
    folder = fetch_austen()
    provenance = json.loads((folder / "provenance.json").read_text(encoding="utf-8"))
    files = {key: filename for key, _, filename in NOVELS}
    documents = [(folder / files[key]).read_text(encoding="utf-8") for key in SPLITS[split]]
    provenance = {**provenance, "split": split, "split_novels": SPLITS[split]}
    return documents, provenance
