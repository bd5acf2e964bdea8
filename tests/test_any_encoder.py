"""Open to the user's own work: encoders under any key with their display names (Table 1 and Figure 3),
any open_clip model and tag checked by the preflight before any download, and one's own image folder
run end to end from the README's command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import open_clip
import pandas as pd
import pytest
import yaml
from PIL import Image
from repo_copy import repository_copy

from lare.compare.registry import REGISTRY, encoder_name, table1_rows
from lare.compare.results import aggregate, make_rows, table1
from lare.data.synthetic import SyntheticSpec, make_synthetic
from lare.pipeline import experiment, ingest, orchestrator, preflight
from lare.pipeline.params import ParameterError, build, open_clip_source

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


# ---------------------------------------------------------------- Table 1 rows for any encoder
def test_every_method_gets_a_row_on_any_encoder_and_the_papers_rows_keep_their_names():
    labels = [(m, r.encoder, r.label) for m, r in table1_rows({"coca": "CoCa", "clip": "CLIP", "siglip": "SigLIP"})]
    assert [x[2] for x in labels[:6]] == ["CLIP (zero-shot)", "CoCa (zero-shot)", "CLIP (fine-tuning)",
                                          "CoCa (fine-tuning)", "LADS", "LARE"]  # the paper's, whatever the order given
    assert {(m, e) for m, e, _ in labels} == {(m, e) for m in REGISTRY for e in ("clip", "coca", "siglip")}
    siglip = {m: label for m, e, label in labels if e == "siglip"}
    assert siglip["linear-probe"] == "SigLIP (linear probe)" and siglip["lare"] == "LARE on SigLIP"
    assert siglip["zero-shot"] == "SigLIP (zero-shot)" and siglip["lads"] == "LADS on SigLIP"
    assert len({label for *_, label in labels}) == len(labels)  # no two rows share a name
    assert (encoder_name("dino"), encoder_name("coca"), encoder_name("coca", {"name": "My CoCa"})) == ("dino", "CoCa", "My CoCa")


def test_table1_pairs_each_encoders_rows_with_its_own_probe():
    rows = []
    for enc, base in (("siglip", 70.0), ("dino", 50.0)):
        for seed in (0, 1, 2):
            for method, gain in (("linear-probe", 0.0), ("lare", 2.0 + seed), ("gaussian-noise", -1.0)):
                rows += make_rows(method=method, encoder=enc, dataset="d", shots=0, seed=seed, params={"m": method},
                                  metrics_by_domain={"in_domain": {"top1": base + seed + gain, "balanced_acc": 0.0}})
    t = table1(aggregate(rows), "d", encoders={"siglip": "SigLIP"}).set_index("method")
    assert list(t.index) == ["SigLIP (linear probe)", "dino (linear probe)", "LARE on SigLIP", "LARE on dino",
                             "Gaussian noise on SigLIP (no f_Box)", "Gaussian noise on dino (no f_Box)"]
    assert t.loc["LARE on dino", "In-domain vs probe mean"] == pytest.approx(3.0)  # paired with dino's probe, not SigLIP's
    assert t.loc["Gaussian noise on SigLIP (no f_Box)", "In-domain vs probe mean"] == pytest.approx(-1.0)
    assert t.loc["LARE on SigLIP", "In-domain vs probe low"] < 3.0 < t.loc["LARE on SigLIP", "In-domain vs probe high"]


# ---------------------------------------------------------------- bring your own, two encoders of other keys
def _npz(path: Path, dim: int, noise: float) -> Path:
    spec = SyntheticSpec(num_classes=6, dim=dim, n_train_per_class=10, n_test_per_class=4, n_ood_per_class=4, noise=noise)
    d = make_synthetic(spec, seed=int(noise * 100), world_seed=7)
    parts = [(d[f"{s}_x"].numpy(), d[f"{s}_y"].numpy(), s) for s in ("train", "test", "ood")]
    np.savez(path, embeddings=np.concatenate([x for x, _, _ in parts]), labels=np.concatenate([y for _, y, _ in parts]),
             split=np.array([s for x, _, s in parts for _ in range(len(x))]), class_names=np.array(d["class_names"]),
             class_text=d["class_text"].numpy(), source_text=d["photo_text"].numpy(), target_text=d["painting_text"].numpy())
    return path


@pytest.fixture(scope="module")
def byo_run(tmp_path_factory):
    """Two bring-your-own encoders under keys that are not the paper's (one named, one not), every
    method, Table 1 and Figure 3, through the library steps of notebooks 01-06 (the fixed recipe, short)."""
    tmp = tmp_path_factory.mktemp("byo_any")
    values = {"profile": "mine", "dataset": "mydata", "source": "byo", "run_dir": str(tmp / "run"),
              "cache_dir": str(tmp / "cache"), "figures_root": str(tmp / "figures"), "device": "cpu", "progress": False,
              "byo": {"siglip": str(_npz(tmp / "siglip.npz", 24, 0.5)), "dino": str(_npz(tmp / "dino.npz", 40, 0.7))},
              "encoders": {"siglip": {"model": "my-siglip", "name": "SigLIP"}, "dino": {"model": "my-dino"}},
              "seeds": [0, 1], "shots": [2, 0], "protocol": "fixed", "box": {"epochs": 2}, "probe": {"epochs": 3},
              "lads": {"epochs": 2}, "table1_dataset": "mydata", "fewshot_dataset": "mydata", "title_note": "BYO test"}
    p = build(values)
    for enc in p.encoders:
        ingest.extract(p, enc)
    experiment.train_boxes(p)
    experiment.run_methods(p, ["lare"])
    experiment.run_methods(p, experiment.baseline_methods())
    return {"values": values, "p": p, "table": experiment.make_table1(p)}


def test_byo_run_with_two_encoders_of_other_keys_gives_a_full_table1(byo_run):
    t = pd.read_csv(byo_run["table"]["csv"]).set_index("method")
    names = {"siglip": "SigLIP", "dino": "dino"}  # the entry's name, else the key
    expected = [r.label for _, r in table1_rows(names)]
    assert list(t.index) == expected and len(expected) == len(REGISTRY) * 2
    assert t[["In-domain mean", "Out-of-domain mean"]].notna().all().all() and (t["seeds"] == 2).all()
    for label in expected:
        if "(linear probe)" not in label:  # every other row: its paired difference from its encoder's probe
            assert t.loc[label, ["In-domain vs probe mean", "In-domain vs probe low", "Out-of-domain vs probe high"]].notna().all()
    for label in ("SigLIP (linear probe)", "LARE on SigLIP", "LADS on dino", "Gaussian noise on dino (no f_Box)"):
        assert f"| {label} |" in byo_run["table"]["md"].read_text()


@pytest.mark.parametrize("chosen,shown", [("", "SigLIP"), ("dino", "dino")])
def test_byo_run_draws_figure3_on_the_encoder_asked_for(byo_run, chosen, shown):
    """Default: coca (the paper's) when there, else the run's first encoder with LARE results; or the one named."""
    p = build({**byo_run["values"], "figure3_encoder": chosen})
    paths, fig = experiment.make_figure3(p)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    plt.close(fig)
    assert labels == [f"{shown} zero-shot", f"{shown} linear probe", "LARE"]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_encoders_key_and_display_name_are_checked():
    with pytest.raises(ParameterError, match="'name' .* must be a non-empty string"):
        build({"encoders": {"siglip": {"noise": 0.5, "name": ""}}})
    with pytest.raises(ParameterError, match="encoder key 'vit/b' names files of the run folder"):
        build({"encoders": {"vit/b": {"noise": 0.5, "name": "ViT/B"}}})
    with pytest.raises(ParameterError, match=r"two encoders share a display name \(\['CLIP', 'CLIP'\]\)"):
        build({"encoders": {"clip": {"noise": 0.5}, "b32": {"noise": 0.6, "name": "CLIP"}}})
    assert build({"encoders": {"vit-b_32": {"noise": 0.5, "name": "ViT-B/32 (OpenAI)"}}}).encoders


def test_a_paper_key_renamed_is_not_shown_as_the_papers_encoder():
    """The paper's rows (and numbers) belong to the paper's encoders: key clip shown as SigLIP gets SigLIP rows."""
    labels = [r.label for _, r in table1_rows({"clip": "SigLIP", "coca": "CoCa"})]
    assert "CLIP (zero-shot)" not in labels and "LADS" not in labels and "LARE on CLIP features (addition)" not in labels
    assert {"SigLIP (zero-shot)", "SigLIP (linear probe)", "LADS on SigLIP", "LARE on SigLIP", "LARE"} <= set(labels)


# ---------------------------------------------------------------- the preflight: names and tags before any download
def _images(root: Path, classes=("Acadian_Flycatcher", "Blue_Jay", "017.Cardinal"), per_split=None) -> Path:
    """A small image folder <root>/{train,test,ood}/<class>/*.jpg, the ood split posterised."""
    rng = np.random.default_rng(0)
    for split, n in (per_split or {"train": 10, "test": 3, "ood": 3}).items():
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.clip(60 * c + rng.normal(0, 30, size=(24, 24, 3)), 0, 255).astype("uint8")
                Image.fromarray((img // 64) * 64 if split == "ood" else img).save(folder / f"{i}.jpg")
    return root


@pytest.fixture
def nothing_built(monkeypatch):
    """Fail the test if open_clip builds (and so possibly downloads) a model."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"open_clip built a model: {args} {kwargs}")
    for name in ("create_model", "create_model_and_transforms"):
        monkeypatch.setattr(open_clip, name, refuse)


def test_preflight_refuses_unknown_models_and_tags_naming_the_nearest(tmp_path, nothing_built):
    _images(tmp_path / "data" / "birds")
    encoders = {"good": {"model": "lare-tiny-clip", "pretrained": "none"},
                "typo": {"model": "lare-tiny-clp", "pretrained": "none"},
                "tag": {"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79kk"},
                "no_tags": {"model": "lare-tiny-coca", "pretrained": "openai"},
                "file": {"model": "lare-tiny-coca", "pretrained": str(tmp_path / "weights" / "missing.pt")}}
    folder = tmp_path / "params" / "mine"
    folder.mkdir(parents=True)
    (folder / "birds.yaml").write_text(yaml.safe_dump({"source": "images", "data_root": str(tmp_path / "data"),
                                                       "encoders": encoders, "table1_dataset": "birds",
                                                       "fewshot_dataset": "birds"}))
    _, report = preflight.check_profile("mine", root=tmp_path)
    said = report["birds"]
    assert not any("'good'" in x for x in said), said
    assert any(x.startswith("encoder 'typo': unknown open_clip model 'lare-tiny-clp'") and "lare-tiny-clip" in x for x in said)
    assert any(x.startswith("encoder 'tag': unknown pretrained tag 'laion2b_s34b_b79kk' for model 'ViT-B-32'")
               and "nearest valid tags: laion2b_s34b_b79k" in x for x in said)
    assert any(x.startswith("encoder 'no_tags'") and "has no published tags" in x for x in said)
    assert any(x.startswith("encoder 'file'") and "missing.pt" in x and "does not exist" in x for x in said)
    assert len(said) == 4, said
    # a check of the parameters alone (no data) still checks the names and tags, not this machine's files
    _, report = preflight.check_profile("mine", root=tmp_path, data=False)
    assert len(report["birds"]) == 3 and not any("'file'" in x for x in report["birds"])


def test_relative_model_and_weights_files_are_taken_from_the_repository_root():
    """As every other path of a run, whatever the notebook's working folder; names, tags and hub ids untouched."""
    model, weights = open_clip_source({"model": "lare/model_configs/lare-tiny-clip.json", "pretrained": "weights/w.pt"})
    assert (model, weights) == (str(ROOT / "lare/model_configs/lare-tiny-clip.json"), str(ROOT / "weights/w.pt"))
    for entry in ({"model": "ViT-B-32", "pretrained": "openai"}, {"model": "hf-hub:org/name"},
                  {"model": "ViT-B-32", "pretrained": "/abs/w.bin"}):
        assert open_clip_source(entry) == (entry["model"], entry.get("pretrained", "none"))


def test_per_profile_notebooks_run_with_their_datasets_file():
    """05 and 07 read Table 1's dataset file (its encoders' names), 06 Figure 3's."""
    steps = orchestrator.plan(["a", "b", "c"], table1="b", fewshot="c")
    assert [(s.notebook, s.dataset) for s in steps if not s.per_dataset] == \
        [("05_table1", "b"), ("06_figure3", "c"), ("07_sensitivity", "b")]
    assert {s.dataset for s in orchestrator.plan(["a", "b"]) if not s.per_dataset} == {"a"}


def test_preflight_checks_figure3_encoder(tmp_path):
    _, report = preflight.check_profile("demo", {"figure3_encoder": "siglip"}, data=False)
    assert any("figure3_encoder 'siglip' is not an encoder LARE runs on in Figure 3's dataset 'synthetic_fewshot' "
               "(['coca'])" in x for x in report["synthetic_domains"])
    _, report = preflight.check_profile("demo", {"figure3_encoder": "coca"}, data=False)
    assert not report


# ---------------------------------------------------------------- one's own images, from the README
def readme_profile() -> tuple[str, str, str]:
    """(path, YAML) of the README's image profile file, and its run command."""
    text = README.read_text()
    section = text.split("## Your own embeddings or images")[1].split("\n## ")[0]
    path, body = next((m.group(1), m.group(0)) for m in re.finditer(r"^# (params/\S+\.yaml)\n.*?(?=^```)", section, re.S | re.M)
                      if "source: images" in m.group(0))
    command = next(line.split("#")[0].strip() for line in section.splitlines()
                   if line.startswith("./run_all.sh --profile") and "--dry-run" not in line)
    return path, body, command


@pytest.mark.slow  # ./run_tests.sh --all: every notebook through papermill (58 s on the 2-core machine)
def test_own_image_folder_runs_end_to_end_from_the_readme(tmp_path):
    """The README's profile file and command on a generated folder of its layout, with tiny random
    encoders under the README's keys (its models need weights): Table 1 on every method and encoder,
    named as the README says, and Figure 3."""
    path, body, command = readme_profile()
    profile = path.split("/")[1]
    dataset = Path(path).stem
    copy = repository_copy(tmp_path / "repo")
    (copy / path).parent.mkdir(parents=True, exist_ok=True)
    (copy / path).write_text(body)
    given = yaml.safe_load(body)
    _images(tmp_path / "data" / dataset)
    tiny = {"encoders": {key: {"model": ("lare-tiny-clip", "lare-tiny-coca")[i % 2], "pretrained": "none"}
                         for i, key in enumerate(given["encoders"])},
            "seeds": [0, 1], "search": {"trials": 2, "max_epochs": 3, "patience": 2}, "box": {"batch_size": 16},
            "probe": {"min_steps": 0}, "lads": {"batch_size": 16}, "batch_size": 8, "progress": False}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    env = {**os.environ, "LARE_NO_SETUP": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    args = command.split()[1:] + ["-f", str(tmp_path / "tiny.yaml"), "-p", "data_root", str(tmp_path / "data"),
                                  "-p", "cache_dir", str(tmp_path / "cache"), "-p", "figures_root", str(tmp_path / "figures")]
    proc = subprocess.run(["./run_all.sh", *args], cwd=copy, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    fig = tmp_path / "figures" / profile
    t = pd.read_csv(fig / "table1.csv").set_index("method")
    names = {key: encoder_name(key, entry) for key, entry in given["encoders"].items()}
    assert list(t.index) == [r.label for _, r in table1_rows(names)]  # every method on every encoder
    assert "SigLIP (linear probe)" in t.index and "LARE on SigLIP" in t.index  # as the README says
    assert t[["In-domain mean", "Out-of-domain mean"]].notna().all().all() and (t["seeds"] == 2).all()
    assert (fig / "figure3.png").stat().st_size > 1000
    agg = pd.read_csv(fig / "results.csv")
    assert set(agg[agg["method"] == "lare"]["shots"]) == set(given["shots"])
    assert set(agg["encoder"]) == set(given["encoders"])
