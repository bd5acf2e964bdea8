"""DomainNet's 40-class "mini" benchmark (the SENTRY split, LADS's ``DomainNetMini``).

The arXiv version of the paper trains on one DomainNet domain and tests on the others; its exact
split is not public, so the closest documented protocol is built here: the 40-class split of
SENTRY (Prabhu et al., ICCV 2021) that LADS uses, training on ``sketch`` (its train list), testing
in domain on sketch's test list and out of domain on the test lists of ``clipart``, ``painting``
and ``real`` (each reported, and their mean).

Layout under ``<data_root>/domainnet/``:

- ``clipart/``, ``painting/``, ``real/``, ``sketch/``: the cleaned DomainNet release, one zip per
  domain (``http://csr.bu.edu/ftp/visda/2019/multi-source/``; MD5 checked, extracted atomically),
  each holding ``<domain>/<class>/<file>.jpg``;
- ``domainnet_sentry_split/<domain>_{train,test}_mini.txt``: the SENTRY lists, lines
  ``<domain>/<class>/<file>.jpg <label>`` (label: the class's index among DomainNet's 345). They
  are downloaded from LADS's repository when the network allows; otherwise the message says
  where to put them. Class ids here are the 40 class names in sorted order, as LADS numbers them.
"""

from __future__ import annotations

from pathlib import Path

from lare.data.datasets import Item, clean_class_name
from lare.data.sources import (
    DatasetIntegrityError,
    DatasetMissingError,
    DatasetSource,
    download,
    network_reachable,
)

DOMAINS = ("clipart", "painting", "real", "sketch")
SOURCE_DOMAIN, TARGET_DOMAINS = "sketch", ("clipart", "painting", "real")
SUBDIR = "domainnet"  # under data_root
LIST_FOLDER = "domainnet_sentry_split"
LIST_URL = "https://raw.githubusercontent.com/lisadunlap/LADS/main/data/domainnet_sentry_split/{name}"
BASE_URL = "http://csr.bu.edu/ftp/visda/2019/multi-source/"
# domain: (path under BASE_URL, MD5, size): clipart and painting from the cleaned ("groundtruth") release
ARCHIVES = {
    "clipart": ("groundtruth/clipart.zip", "cd0d8f2d77a4e181449b78ed62bccf1e", "about 1.3 GB"),
    "painting": ("groundtruth/painting.zip", "1ae32cdb4f98fe7ab5eb0a351768abfd", "about 3.7 GB"),
    "real": ("real.zip", "dcc47055e8935767784b7162e7c7cca6", "about 5.6 GB"),
    "sketch": ("sketch.zip", "658d8009644040ff7ce30bb2e820850f", "about 2.5 GB"),
}


def domain_source(domain: str) -> DatasetSource:
    """The :class:`lare.data.sources.DatasetSource` of one domain's zip (under ``<data_root>/domainnet``)."""
    path, md5, size = ARCHIVES[domain]
    return DatasetSource(name=f"domainnet_{domain}", title=f"DomainNet {domain}", folder=domain, required=(),
                         archive=f"{domain}.zip", url=BASE_URL + path, md5=md5, size=size,
                         manual=f"(the cleaned DomainNet release; the zip holds the folder {domain}/ with one folder per class.)")


def list_names() -> list[str]:
    """The lists the protocol reads: the source domain's train and test lists, the targets' test lists."""
    return [f"{SOURCE_DOMAIN}_train_mini.txt", f"{SOURCE_DOMAIN}_test_mini.txt", *(f"{d}_test_mini.txt" for d in TARGET_DOMAINS)]


def lists_how_to_get(root: Path, missing: list[str]) -> str:
    return (f"DomainNet's SENTRY 40-class lists are missing: {', '.join(missing)} in {root / LIST_FOLDER}/.\n"
            f"  They are in LADS's repository (github.com/lisadunlap/LADS, folder data/domainnet_sentry_split/, "
            f"also SENTRY's github.com/virajprabhu/SENTRY); download them, e.g. {LIST_URL.format(name=missing[0])},\n"
            f"  and put them in {root / LIST_FOLDER}/ (lines '<domain>/<class>/<file>.jpg <label>'), or run with the network on.")


def list_problems(root: str | Path, *, allow_download: bool) -> list[str]:
    """What stands in the way of :func:`prepare_lists` (empty: ready or downloadable)."""
    root = Path(root)
    missing = [n for n in list_names() if not (root / LIST_FOLDER / n).is_file()]
    if not missing or (allow_download and network_reachable(LIST_URL.format(name=missing[0]))):
        return []
    return [lists_how_to_get(root, missing)]


def prepare_lists(root: str | Path, *, allow_download: bool = True) -> Path:
    """The list folder, downloading the lists that are missing when allowed."""
    root = Path(root)
    folder = root / LIST_FOLDER
    missing = [n for n in list_names() if not (folder / n).is_file()]
    if missing:
        if not (allow_download and network_reachable(LIST_URL.format(name=missing[0]))):
            raise DatasetMissingError(lists_how_to_get(root, missing))
        for name in missing:
            download(LIST_URL.format(name=name), folder / name)
    return folder


def read_list(path: Path, domain: str) -> list[tuple[str, str]]:
    """``(relative path, class folder)`` per line of a SENTRY list, checked: two fields, the path in
    ``domain``, an integer label."""
    if not path.is_file():
        raise DatasetIntegrityError(f"{path} is missing: put the SENTRY lists in {path.parent}/")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        rel = parts[0]
        pieces = rel.split("/")
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or len(pieces) != 3 or pieces[0] != domain:
            raise DatasetIntegrityError(f"{path}, line {n}: expected '{domain}/<class>/<file> <label>', got {line!r}; "
                                        "is it the right list? Download it again")
        out.append((rel, pieces[1]))
    if not out:
        raise DatasetIntegrityError(f"{path} is empty; download it again")
    return out


def domainnet_items(root: str | Path, *, source: str = SOURCE_DOMAIN, targets=TARGET_DOMAINS
                    ) -> tuple[dict[str, list[Item]], list[str]]:
    """Items of the protocol and the 40 class names (sorted, as LADS numbers them):
    ``train`` and ``test`` from the source domain's lists, ``ood`` from each target domain's test
    list (``Item.domain`` says which). Every list must name the same 40 classes."""
    root = Path(root)
    lists = {(d, s): read_list(root / LIST_FOLDER / f"{d}_{s}_mini.txt", d)
             for d in (source, *targets) for s in (("train", "test") if d == source else ("test",))}
    classes = sorted({c for rows in lists.values() for _, c in rows})
    for (d, s), rows in lists.items():
        have = {c for _, c in rows}
        if have != set(classes):
            odd = sorted(set(classes) ^ have)
            raise DatasetIntegrityError(f"{root / LIST_FOLDER}/{d}_{s}_mini.txt names other classes than the other lists "
                                        f"({len(have)} vs {len(classes)}, e.g. {odd[:3]}); download the lists again")
    index = {c: i for i, c in enumerate(classes)}

    def items(d: str, s: str) -> list[Item]:
        return [Item(id=f"domainnet/{rel}", path=str(root / rel), label=index[c], domain=d) for rel, c in lists[(d, s)]]

    out = {"train": items(source, "train"), "test": items(source, "test"),
           "ood": [it for d in targets for it in items(d, "test")]}
    return out, [clean_class_name(c) for c in classes]


def check_domainnet(data_root: str | Path, *, allow_download: bool) -> list[str]:
    """Every problem with the DomainNet sources (zips of the four domains and the lists)."""
    root = Path(data_root) / SUBDIR
    return [*(p for d in DOMAINS for p in domain_source(d).problems(root, allow_download=allow_download)),
            *list_problems(root, allow_download=allow_download)]


def load_domainnet(data_root: str | Path, *, allow_download: bool = True) -> tuple[dict[str, list[Item]], list[str]]:
    """Prepare (find, extract or download) the four domains and the lists; the protocol's items."""
    root = Path(data_root) / SUBDIR
    problems = check_domainnet(data_root, allow_download=allow_download)
    if problems:
        raise DatasetMissingError("\n\n".join(problems))
    for d in DOMAINS:
        domain_source(d).prepare(root, allow_download=allow_download)
    prepare_lists(root, allow_download=allow_download)
    return domainnet_items(root)
