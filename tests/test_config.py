"""validation.settings.config: one settings vocabulary for the suites (ModelSettings), the benchmark (WorkloadSpec) and
curated training (TaskSpec); stored settings of earlier code still read."""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import pytest
import torch

from validation.bench import workloads as bench_workloads
from validation.curation import cli as curate_cli
from validation.curation.protocols import apply_protocol
from validation.curation.tasks import TASKS, TaskSpec, get_task
from validation.data import noise as vnoise
from validation.settings.config import LEGACY, ConfigError, NoiseSpec, upgrade
from validation.settings.profiles import MODELS, PROFILES, ModelSettings, get_profile, model_settings

STORED = Path(__file__).resolve().parents[1] / "paper_figs" / "data" / "curation" / "provenance.json"
SYSTEMS = (ModelSettings, bench_workloads.WorkloadSpec, TaskSpec)


def annotations(cls) -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(cls)}


def as_json(d):
    return json.loads(json.dumps(d))


# ------------------------------------------------------------------------------------------- vocabulary

def test_the_three_systems_share_names_and_shapes():
    shared = {"dataset", "data_kw", "model", "model_kw", "n_ref", "lr"}
    first = annotations(SYSTEMS[0])
    for cls in SYSTEMS:
        a = annotations(cls)
        assert shared <= set(a), (cls.__name__, shared - set(a))
        assert {k: a[k] for k in shared} == {k: first[k] for k in shared}, cls.__name__
        assert not set(a) & (set(LEGACY) | {"n_train", "ref_size"}), cls.__name__
    for cls in (ModelSettings, TaskSpec):
        a = annotations(cls)
        assert a["noise"] == "NoiseSpec" and a["batch_size"] == first["batch_size"] == "int"
    assert annotations(bench_workloads.WorkloadSpec)["n_score"] == first["n_score"]


def test_every_setting_is_built_with_a_noise_spec_and_json_ready():
    for name in PROFILES:
        profile = as_json(get_profile(name))
        for model in MODELS:
            s = model_settings(profile, model)
            assert isinstance(s.noise, NoiseSpec) and s.model == model
            assert as_json(s.to_dict()) == profile["models"][model]
    for spec in TASKS.values():
        assert isinstance(spec.noise, NoiseSpec)
        assert TaskSpec.from_dict(as_json(spec.to_dict())).to_dict() == as_json(spec.to_dict())
    for name in bench_workloads.WORKLOADS:
        spec = bench_workloads.workload_spec(name, tiny=True)
        assert as_json(spec.to_dict())["model"] == spec.model


# ------------------------------------------------------------------------------------------------ noise

@pytest.mark.parametrize("kw", [dict(kind="gaussian", rate=0.1), dict(kind="symmetric", rate=1.5),
                                dict(kind="symmetric", rate=True), dict(kind="symmetric", rate="0.2"),
                                dict(kind="symmetric", rate=0.2, mode="shuffle"),
                                dict(kind="documents", rate=0.2, mode="reverse"),
                                dict(kind="symmetric", rate=0.2, mapping=[1, 0]),
                                dict(kind="class_dependent", rate=0.2, mapping={"0": 1})])
def test_noise_spec_refuses_bad_settings(kw):
    with pytest.raises(ConfigError):
        NoiseSpec(**kw)


def test_noise_spec_dicts_old_and_new():
    spec = NoiseSpec("class_dependent", 0.3, mapping=[1, 2, 0])
    assert spec.mapping == (1, 2, 0)
    assert NoiseSpec.from_config(as_json(spec.to_dict())) == spec
    assert NoiseSpec.from_config({"kind": "documents", "rate": 0.2, "mode": "shuffle_chars"}).mode == "shuffle_chars"
    assert NoiseSpec("documents", 0.2) == NoiseSpec("documents", 0.2, mode="shuffle")  # one spelling each
    for bad in ({"kind": "symmetric"}, {"kind": "symmetric", "rate": 0.2, "noise_rate": 0.2}, "symmetric"):
        with pytest.raises(ConfigError):
            NoiseSpec.from_config(bad)


def test_noise_spec_applies_the_noise_module():
    y = torch.arange(60) % 3
    got = NoiseSpec("symmetric", 0.3).apply_labels(y, 3, seed=5)
    assert torch.equal(got.y_noisy, vnoise.symmetric_label_noise(y, 0.3, 3, seed=5).y_noisy)
    got = NoiseSpec("class_dependent", 0.5, mapping=[2, 0, 1]).apply_labels(y, 3, seed=5)
    want = vnoise.class_dependent_label_noise(y, 0.5, 3, seed=5, mapping=[2, 0, 1])
    assert torch.equal(got.y_noisy, want.y_noisy) and got.meta["mapping"] == [2, 0, 1]
    assert int(got.is_noisy.sum()) > 0 and bool(((got.y_noisy - y) % 3 == 2)[got.is_noisy].all())
    docs = [f"doc {i} has a few words here" for i in range(10)]
    for mode in (None, "random_bytes"):
        got = NoiseSpec("documents", 0.4, mode=mode).apply_documents(docs, seed=1)
        assert got.texts == vnoise.corrupt_documents(docs, 0.4, seed=1, mode=mode or "shuffle").texts
    with pytest.raises(ConfigError):
        NoiseSpec("documents", 0.4).apply_labels(y, 3, seed=0)
    with pytest.raises(ConfigError):
        NoiseSpec("symmetric", 0.4).apply_documents(docs, seed=0)


# ---------------------------------------------------------------------------------- stored, earlier code

def test_stored_curation_task_settings_read_as_the_tasks_of_today():
    """paper_figs/data/curation/provenance.json keeps the task settings as the code that ran them wrote them (earlier
    code: noise kind and rate side by side, ref_size, seq_len, doc_mode); read back they are today's tasks under
    their protocol, with the epochs they ran (the plateau rule changed the tasks' epochs since)."""
    folders = json.loads(STORED.read_text())["folders"]
    assert folders
    for cfg in folders.values():
        old = cfg["task"]
        spec = TaskSpec.from_dict(old)
        today = apply_protocol(dataclasses.replace(get_task(old["name"]), epochs=old["epochs"]), old["protocol"])
        assert as_json(spec.to_dict()) == as_json(today.to_dict())
        if "ref_size" in old:  # written by earlier code
            assert spec.n_ref == old["ref_size"] and spec.noise == NoiseSpec(old["noise"], old["rate"])


def test_an_old_language_task_dict_reads_with_its_mode_and_sequence_length():
    old = {"name": "lm-finetune", "kind": "lm-finetune", "dataset": "pydoc", "model": "transformer",
           "model_kw": dict(get_task("lm-finetune").model_kw), "noise": "documents", "rate": 0.3, "epochs": 2,
           "batch_size": 32, "lr": 0.1, "momentum": 0.9, "val_size": 200, "val_docs": 0.1, "ref_size": 16,
           "reference": "fixed", "warmup_steps": 0, "seq_len": 64, "pretrain_epochs": 2, "doc_mode": "shuffle",
           "max_train": None, "warmup_epochs": 0.0, "protocol": "ours", "ramp_epochs": 10}
    assert upgrade(old)["noise"] == {"kind": "documents", "rate": 0.3, "mode": "shuffle"}
    assert TaskSpec.from_dict(old) == get_task("lm-finetune")
    with pytest.raises(ConfigError, match="unknown task settings"):
        TaskSpec.from_dict({**old, "temperature": 1.0})


def test_an_old_run_config_reads_its_model_settings():
    """Suite settings as config.json held them before ``model`` was a field and when noise dicts left out
    unset keys."""
    old = as_json(get_profile("tiny"))
    for d in old["models"].values():
        del d["model"]
        d["noise"] = {k: v for k, v in d["noise"].items() if v is not None}
    for model in MODELS:
        assert as_json(model_settings(old, model).to_dict()) == as_json(get_profile("tiny")["models"][model])
    old["models"]["mlp"]["ref_size"] = old["models"]["mlp"].pop("n_ref") + 3  # an old name maps to today's
    assert model_settings(old, "mlp").n_ref == get_profile("tiny")["models"]["mlp"]["n_ref"] + 3
    old["models"]["mlp"]["n_train"] = 4
    with pytest.raises(ConfigError, match="n_train"):
        model_settings(old, "mlp")


def test_curate_ref_size_flag_sets_n_ref_after_the_protocol(monkeypatch, capsys):
    seen = []

    def fake(spec, methods, seeds, *a, **kw):
        seen.append(spec)
        return types.SimpleNamespace(root="run"), [], []

    monkeypatch.setattr(curate_cli, "run_comparison", fake)
    assert curate_cli.main(["--task", "digits-noisy20", "--protocol", "both", "--ref-size", "7", "--seeds", "0",
                            "--timing-steps", "0", "--no-progress", "--quiet"]) == 0
    assert [(s.protocol, s.n_ref) for s in seen] == [("ours", 7), ("original", 7)]
    assert seen[0].noise == NoiseSpec("symmetric", 0.2)


# ------------------------------------------------------------------------------------------------ bench

@pytest.mark.parametrize("tiny", [True, False])
def test_bench_workload_batches_fit_the_built_models(tiny):
    for name in bench_workloads.WORKLOADS:
        w = bench_workloads.build_workload(name, tiny=tiny)
        x, y = w.make(3, torch.Generator().manual_seed(0))
        with torch.no_grad():
            out = w.model(x)
        assert out.shape[0] == 3 and float(w.loss_fn(out, y).sum()) > 0
        if name == "transformer":
            assert x.shape[1] == w.model.pos.num_embeddings and int(x.max()) < w.model.tok.num_embeddings
        assert w.meta["spec"]["n_score"] == w.spec.n_score and w.name == name


def test_figures_read_curation_folders_of_both_vocabularies(tmp_path):
    from validation.report.curation import load_curation
    from validation.report.results import atomic_write_json

    spec = get_task("digits-noisy20-classdep")
    old = {k: v for k, v in spec.to_dict().items() if k not in ("noise", "n_ref", "data_kw")}
    old.update(noise="class_dependent", rate=0.2, ref_size=200, seq_len=64, doc_mode="shuffle")
    old["protocol"] = "original"  # one folder per (task, protocol) is read
    for cid, task in (("ours", spec.to_dict()), ("original", old)):
        folder = tmp_path / "curate" / f"{spec.name}-{cid}-0123"
        atomic_write_json(folder / "config.json", {"profile": spec.name, "task": task})
        atomic_write_json(folder / "units" / "curate" / spec.name / "seed0" / "vanilla.json", {
            "task": spec.name, "method": "vanilla", "seed": 0, "metric": "accuracy", "final": 0.5,
            "curve": [0.4, 0.5], "protocol": cid})
    rows = load_curation(tmp_path).final.rows
    assert sorted(r["protocol"] for r in rows) == ["original", "ours"]
    for r in rows:
        assert (r["noise"], r["rate"], r["dataset"], r["model"]) == ("class_dependent", 0.2, "digits", "cnn2d")


def test_seeds_are_lists_in_every_profile():
    from validation.curation.runner import profile_specs
    from validation.settings.profiles import CURATION_PROFILES

    for name in PROFILES:
        assert isinstance(get_profile(name)["seeds"], list)
    for name, p in CURATION_PROFILES.items():
        assert p["seeds"] == list(range(len(p["seeds"]))), name
        assert {s.protocol for s, _ in profile_specs(p)} == set(p["methods"])
