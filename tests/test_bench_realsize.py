"""``lai bench``'s real-size workloads: the builders' shapes, the guarded child process and what it records, the
ratios and targets computed from the measured numbers, ``--resume``, and (slow) the real-size models end to end."""

import json
from pathlib import Path

import pytest
import torch

from validation.bench import command as bench
from validation.bench import realsize_run as bench_realsize_run
from validation.bench.isolate import GIB, STATUSES, run_isolated
from validation.bench.realsize import (
    GPT2_VOCAB,
    PYTHIA_VOCAB,
    REALSIZE,
    CifarResNet18,
    build_real,
    hf_config,
    real_spec,
)
from validation.bench.realsize_report import (
    CURATED_OVER_PLAIN,
    OVER_FORWARD,
    OVER_FORWARD_BACKWARD,
    PEAK_OVER_FB_PEAK,
    estimator_ratios,
    row_targets,
)

HERE = str(Path(__file__).parent)


# ---------------------------------------------------------------- builders


def test_real_configs_have_the_real_shapes():
    import transformers as tf

    gpt2, default = hf_config(real_spec("gpt2-small")), tf.GPT2Config()
    for key in ("vocab_size", "n_embd", "n_layer", "n_head"):
        assert getattr(gpt2, key) == getattr(default, key)
    assert gpt2.vocab_size == GPT2_VOCAB and gpt2.tie_word_embeddings
    assert real_spec("gpt2-small").seq_len == 128 and real_spec("gpt2-small-512").seq_len == 512
    neox = hf_config(real_spec("pythia-160m"))
    assert (neox.vocab_size, neox.hidden_size, neox.num_hidden_layers, neox.num_attention_heads,
            neox.intermediate_size) == (PYTHIA_VOCAB, 768, 12, 12, 3072)
    assert not neox.tie_word_embeddings and neox.rope_parameters["partial_rotary_factor"] == 0.25
    vit = hf_config(real_spec("vit-s"))
    assert (vit.hidden_size, vit.num_hidden_layers, vit.num_attention_heads, vit.intermediate_size,
            vit.image_size, vit.patch_size) == (384, 12, 6, 1536, 32, 4)
    for name in REALSIZE:  # the batch sizes
        s = real_spec(name)
        assert (s.n_score, s.n_ref) == ((2, 2) if s.kind == "lm" else (32, 32))


def test_resnet18_is_the_cifar_resnet18():
    model = build_real(real_spec("resnet18")).model
    assert isinstance(model, CifarResNet18) and not model.training
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # ResNet-18 with a 3x3 stem, 10 classes
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 17  # 1 stem + 16 in 8 basic blocks (plus the fc: 18 weight layers)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", REALSIZE)
def test_tiny_workloads_build_and_are_scored(name):
    import influence

    w = build_real(real_spec(name, tiny=True))
    gen = torch.Generator().manual_seed(0)
    train, ref = w.make(w.spec.n_score, gen), w.make(w.spec.n_ref, gen)
    r = influence.ghost(w.model, w.loss_fn, train, ref, lr=w.spec.lr)
    assert r.scores.shape == (w.spec.n_score,) and torch.isfinite(r.scores).all()
    assert not r.routed_to_exact  # every layer of these shapes has a factored rule
    assert w.meta["params_m"] > 0 and w.spec.tiny


def test_real_vocabulary_lm_builders():
    for name, vocab in (("gpt2-small", GPT2_VOCAB), ("pythia-160m", PYTHIA_VOCAB)):
        spec = real_spec(name, tiny=True, vocab=vocab)
        w = build_real(spec)
        x, y = w.make(2, torch.Generator().manual_seed(0))
        with torch.no_grad():
            logits = w.model(**x).logits
        assert logits.shape == (2, spec.seq_len, vocab)
        assert int(x["input_ids"].max()) < vocab and w.loss_fn(logits, y).shape == (2,)
        head, emb = w.model.get_output_embeddings().weight, w.model.get_input_embeddings().weight
        assert (head is emb) == (name == "gpt2-small")  # GPT-2 ties its head, Pythia does not


def test_workload_names_keep_all_to_the_toy_workloads():
    assert bench.workload_names("all") == ["mlp", "transformer", "cnn", "cnn1d"]
    assert bench.workload_names("gpt2-small,all") == ["gpt2-small", "mlp", "transformer", "cnn", "cnn1d"]
    with pytest.raises(Exception, match="unknown workload"):
        bench.workload_names("gpt3")


# ---------------------------------------------------------------- the guarded child


@pytest.mark.parametrize("fn, job, status, text", [
    ("returns", {"value": 7}, "ok", "ok"),
    ("raises_runtime", {}, "error", "error: RuntimeError: DefaultCPUAllocator"),
    ("refuses", {}, "refused", "refused: BudgetRefusal: the reference matrix needs 10.1 GB"),
    ("grows", {"max_gb": 3}, "killed", "killed: over 0.4 GiB resident"),
    ("sleeps", {"seconds": 60}, "timeout", "timeout: after 3 s"),
    ("kills_itself", {}, "killed", "killed: SIGKILL (SIGKILL not sent by the guard"),
    ("exits", {}, "error", "error: the child exited with status 3"),
])
def test_isolated_child_records_its_outcome(fn, job, status, text):
    out = run_isolated(f"isolate_targets:{fn}", job, timeout_s=3 if fn == "sleeps" else 120,
                       rss_limit_bytes=int(0.4 * GIB), extra_path=[HERE])
    assert out.status == status and out.status in STATUSES
    assert out.text.startswith(text), out.text
    if status == "ok":
        assert out.result["echo"] == 7 and out.result["pid"] > 0
    else:
        assert out.result is None
    if fn == "grows":  # killed near the limit, long before the 3 GB it would have reached
        assert 0.4 * GIB < out.rss_peak_bytes < 1.5 * GIB
    if fn == "sleeps":
        assert 3 <= out.wall_s < 30


# ---------------------------------------------------------------- lai bench with real-size rows


def tiny(memory_gb: float = 4.0) -> list[str]:
    """Options of a tiny real-size run with the real GPT-2 vocabulary, rows killed above ``memory_gb``."""
    return ["--tiny", "--vocab", str(GPT2_VOCAB), "--repeats", "2", "--clock", "cpu", "--no-progress",
            "--row-timeout", "300", "--row-memory-gb", str(memory_gb)]


@pytest.fixture(scope="module")
def real_vocab_run(tmp_path_factory):
    """gpt2-small's builder at d = 32 with the real 50,257-token vocabulary: one estimator row, the curated step
    and a score_dataset row, each in its own guarded process."""
    out = tmp_path_factory.mktemp("realsize") / "b"
    report = bench.run(["--workload", "gpt2-small", "--estimators", "lai-last", "--dataset-n", "8", *tiny(),
                        "--out", str(out)])
    return out, report


def test_real_vocab_rows_are_measured_and_saved(real_vocab_run):
    out, report = real_vocab_run
    data = json.loads((out / "bench.json").read_text())
    rows = data["realsize"]["rows"]
    assert set(rows) == {"gpt2-small/lai-last", "gpt2-small/curated-lai@8", "gpt2-small/curated-lai-last@8",
                         "gpt2-small/dataset-lai-last"}
    assert rows == json.loads(json.dumps(report["realsize"]["rows"]))
    assert "workloads" in data and not data["workloads"] and "overhead" not in data  # no toy sections
    for row in rows.values():
        assert row["status"] == "ok", row["text"] + row["log_tail"]
        assert row["result"]["meta"]["spec"]["vocab"] == GPT2_VOCAB and row["rss_peak_bytes"] > 0
    est = rows["gpt2-small/lai-last"]["result"]
    for key in ("first", "steady", "forward", "forward_backward"):
        assert est[f"{key}_s"] > 0 and est[f"{key}_cpu_s"] > 0
    assert len(est["steady_times_s"]) == 2 and est["forward_backward_peak_bytes"] > 0
    cur = rows["gpt2-small/curated-lai@8"]["result"]
    assert cur["k"] == 8 and cur["steps"] == 8 and len(cur["curated_times_s"]) == 9 and 0 < cur["kept_fraction"] <= 1
    ds = rows["gpt2-small/dataset-lai-last"]["result"]
    assert ds["n"] == 8 and ds["score_s"] > 0 and ds["forward_backward_s"] > 0
    text = (out / "bench.txt").read_text()
    assert "gpt2-small (real size)" in text and "vocab 50257" in text and "samples/s" in text
    assert "[   MET]" in text or "[MISSED]" in text


def test_ratios_and_targets_come_from_the_measured_numbers(real_vocab_run):
    _, report = real_vocab_run
    rows = report["realsize"]["rows"]
    r = rows["gpt2-small/lai-last"]
    res, q = r["result"], r["ratios"]
    assert q["steady_over_forward"] == pytest.approx(res["steady_cpu_s"] / res["forward_cpu_s"])
    assert q["steady_over_forward_backward"] == pytest.approx(res["steady_cpu_s"] / res["forward_backward_cpu_s"])
    assert q["first_over_steady_plus_fb"] == pytest.approx(
        res["first_cpu_s"] / (res["steady_cpu_s"] + res["forward_backward_cpu_s"]))
    assert q["peak_over_fb_peak"] == pytest.approx(res["steady_peak_bytes"] / res["forward_backward_peak_bytes"])
    targets = {t["target"]: t for t in r["targets"]}
    t = targets["lai-last steady / forward"]
    assert t["value"] == q["steady_over_forward"] and t["bound"] == OVER_FORWARD["lai-last"]
    assert t["met"] == (t["value"] <= t["bound"])
    assert targets["lai-last peak / forward+backward peak"]["bound"] == PEAK_OVER_FB_PEAK
    c = rows["gpt2-small/curated-lai@8"]
    assert c["ratios"]["curated_over_plain"] == pytest.approx(c["result"]["curated_cpu_s"] / c["result"]["plain_cpu_s"])
    assert c["targets"][0]["bound"] == CURATED_OVER_PLAIN
    d = rows["gpt2-small/dataset-lai-last"]
    assert d["ratios"]["score_samples_per_s"] == pytest.approx(8 / d["result"]["score_cpu_s"])


def test_targets_of_a_row_on_made_up_numbers():
    res = {"first_s": 9.0, "steady_s": 3.0, "forward_s": 2.0, "forward_backward_s": 4.0, "steady_peak_bytes": 300,
           "forward_backward_peak_bytes": 100}
    res.update({k.replace("_s", "_cpu_s"): v for k, v in res.items() if k.endswith("_s")})
    q = estimator_ratios(res, "wall")
    assert q["steady_over_forward"] == 1.5 and q["first_over_steady_plus_fb"] == 9 / 7 and q["peak_over_fb_peak"] == 3
    row = {"kind": "estimator", "name": "ghost", "status": "ok", "result": res, "text": "ok"}
    got = {t["target"]: t["met"] for t in row_targets(row, "wall")}
    assert got == {"ghost steady / forward+backward": 3 / 4 <= OVER_FORWARD_BACKWARD["ghost"],
                   "ghost first / (steady + forward+backward)": False, "ghost peak / forward+backward peak": False}
    failed = {**row, "status": "killed", "text": "killed: over 6.0 GiB resident", "result": None}
    assert all(t["met"] is False and t["why"].startswith("killed") for t in row_targets(failed, "wall"))


def test_resume_skips_finished_rows_and_runs_new_ones(real_vocab_run, monkeypatch):
    out, first = real_vocab_run
    calls = []

    def counting(target, job, **kw):
        calls.append(job.get("estimator"))
        return run_isolated(target, job, **kw)

    monkeypatch.setattr(bench_realsize_run, "run_isolated", counting)
    again = bench.run(["--workload", "gpt2-small", "--estimators", "lai-last", "--dataset-n", "8", *tiny(),
                       "--out", str(out), "--resume"])
    assert calls == []  # every row done with the same job
    assert again["realsize"]["rows"] == first["realsize"]["rows"]
    more = bench.run(["--workload", "gpt2-small", "--estimators", "lai-last,tracin-last", "--dataset-n", "8",
                      "--no-curated", *tiny(), "--out", str(out), "--resume"])
    assert calls == ["tracin-last"]  # only the new row; the dataset rows are for lai, lai-last and ghost
    rows = more["realsize"]["rows"]
    assert rows["gpt2-small/tracin-last"]["status"] == "ok"
    assert rows["gpt2-small/lai-last"] == first["realsize"]["rows"]["gpt2-small/lai-last"]


def test_a_row_killed_over_its_memory_limit_is_recorded_and_the_run_goes_on(tmp_path):
    out = tmp_path / "b"
    report = bench.run(["--workload", "gpt2-small,vit-s", "--estimators", "lai-last", "--no-curated",
                        "--dataset-n", "0", *tiny(0.2), "--out", str(out)])  # python + torch alone > 0.2 GiB
    rows = json.loads((out / "bench.json").read_text())["realsize"]["rows"]
    assert set(rows) == {"gpt2-small/lai-last", "vit-s/lai-last"} == set(report["realsize"]["rows"])
    for row in rows.values():
        assert row["status"] == "killed" and row["text"].startswith("killed: over 0.2 GiB resident")
        assert row["result"] is None and all(t["met"] is False for t in row["targets"])
    assert "killed: over 0.2 GiB" in (out / "bench.txt").read_text()


# ---------------------------------------------------------------- slow


@pytest.mark.slow
def test_vocabulary_sized_allocation_is_contained(tmp_path):
    """All-layer and aligned LAI on a 50,257-token vocabulary at 128 tokens: the current core allocates a V x V
    reference matrix (10 GB); the row must end as a recorded outcome (refused by name, killed above the limit, or
    measured) and never take the run down."""
    report = bench.run(["--workload", "gpt2-small", "--estimators", "lai,lai-aligned,lai-last", "--no-curated",
                        "--dataset-n", "0", "--seq-len", "128", *tiny(2.5),
                        "--out", str(tmp_path / "b")])
    rows = report["realsize"]["rows"]
    assert set(rows) == {"gpt2-small/lai", "gpt2-small/lai-aligned", "gpt2-small/lai-last"}
    assert rows["gpt2-small/lai-last"]["status"] == "ok"
    for key in ("gpt2-small/lai", "gpt2-small/lai-aligned"):
        assert rows[key]["status"] in ("ok", "refused", "killed"), rows[key]["text"]
        assert rows[key]["rss_peak_bytes"] < 3.5 * GIB


@pytest.mark.slow
def test_real_size_workloads_end_to_end(tmp_path):
    """Every real-size workload at its real width and vocabulary (2 layers, 64 tokens, so that it ends in tens of
    minutes on 2 cores; ``lai bench --workload ...`` without --n-layers/--seq-len is the full run), every
    estimator, the curated step and dataset scoring: each row recorded, Ghost and last-layer LAI measured."""
    out = tmp_path / "b"
    report = bench.run(["--workload", ",".join(REALSIZE), "--n-layers", "2", "--seq-len", "64", "--repeats", "1",
                        "--dataset-n", "16", "--clock", "cpu", "--no-progress", "--row-memory-gb", "6",
                        "--row-timeout", "1800", "--out", str(out)])
    rows = report["realsize"]["rows"]
    plan = bench_realsize_run.plan_rows(list(REALSIZE), bench_realsize_run.real_estimators(),
                                        bench.realsize_settings(bench.build_parser().parse_args(
                                            ["--n-layers", "2", "--seq-len", "64", "--repeats", "1",
                                             "--dataset-n", "16", "--row-memory-gb", "6", "--row-timeout", "1800"])))
    assert set(rows) == {p.key for p in plan}
    for key, row in rows.items():
        assert row["status"] in STATUSES
        if row["status"] == "ok":
            assert all(v is None or v > 0 for v in row["ratios"].values()), key
    for wl in REALSIZE:
        for e in ("ghost", "lai-last"):
            assert rows[f"{wl}/{e}"]["status"] == "ok", rows[f"{wl}/{e}"]["text"]
        assert rows[f"{wl}/ghost"]["result"]["meta"]["spec"]["d_model"] in (768, 384, 64)
    text = (out / "bench.txt").read_text()
    assert all(f"== {wl} (real size)" in text for wl in REALSIZE)
