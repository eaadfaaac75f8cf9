"""The stage driver: option parsing, the generic-manifest path through stages 2-4, stage 7's NNA runs,
the result tables and (slow) the FSDD recipe end to end."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from lhotse import RecordingSet, SupervisionSet, load_manifest

from nnaqat.checkpoint import load_model
from nnaqat.sizes import read_weight_size
from model_configs import shrunk_default_model
from repo_paths import FSDD_CONF, FSDD_RECIPE, FSDD_TARBALL, NNA_CONF, REPO


def run(args, cwd, **kwargs):
    return subprocess.run(["bash", str(REPO / "run.sh"), *args], cwd=cwd, capture_output=True, text=True, **kwargs)


def test_unknown_option_is_an_error(tmp_path):
    done = run(["--no-such-option", "1"], tmp_path)
    assert done.returncode != 0
    assert "unknown option --no-such-option" in done.stderr


def test_help_lists_options(tmp_path):
    done = run(["--help"], tmp_path)
    assert done.returncode == 0
    assert "--holdout-speaker" in done.stderr and "--num-epochs 8" in done.stderr


def test_external_manifests_through_fbank_and_tokens(fsdd_manifests, tmp_path):
    manifests = tmp_path / "external"
    manifests.mkdir()
    for part, take_count in (("train", 30), ("dev", 8)):
        sups = list(fsdd_manifests[part]["supervisions"])[:take_count]
        recs = RecordingSet.from_recordings(fsdd_manifests[part]["recordings"][s.recording_id] for s in sups)
        recs.to_file(manifests / f"mycorpus_recordings_{part}.jsonl.gz")
        SupervisionSet.from_segments(sups).to_file(manifests / f"mycorpus_supervisions_{part}.jsonl.gz")
    done = run(
        ["--manifest-dir", str(manifests), "--manifest-prefix", "mycorpus", "--parts", "train dev",
         "--stage", "2", "--stop-stage", "4", "--speed-perturb", "", "--exp-tag", "ext"],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    cuts = load_manifest(tmp_path / "data/fbank/mycorpus_cuts_train.jsonl.gz")
    assert len(cuts) == 30 and all(c.has_features and c.sampling_rate == 16000 for c in cuts)
    tokens = (tmp_path / "data/lang_bpe_32/tokens.txt").read_text().splitlines()
    assert tokens[0] == "<blk> 0"


def test_loso_tables_average_each_kind_of_model_over_the_speakers(tmp_path):
    """``egs/fsdd/local/run_loso.sh --table-only``: one table per kind of folder (the fp32 model and
    each stage-7 suffix), each with the mean over the speakers that have it (or over ``--speakers``)."""
    recipe = tmp_path / "egs/fsdd"
    (recipe / "local").mkdir(parents=True)
    shutil.copy(FSDD_RECIPE / "local/run_loso.sh", recipe / "local")
    (tmp_path / "local").symlink_to(REPO / "local")
    (tmp_path / ".venv/bin").mkdir(parents=True)
    (tmp_path / ".venv/bin/activate").write_text("")  # the test's own python is on PATH
    wers = {"george": ("20.00", "22.00"), "lucas": ("16.00", None), "theo": ("6.00", "7.00")}
    for speaker, (fp32, aat) in wers.items():
        for kind, wer in (("", fp32), ("-aat-int8", aat)):
            if wer is not None:
                folder = recipe / f"exp/loso-t-{speaker}{kind}/greedy_search"
                folder.mkdir(parents=True)
                (folder / "wer-summary-test-epoch-1-avg-1.txt").write_text(f"settings\tWER\ngreedy_search\t{wer}\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(recipe / "local/run_loso.sh"), "--tag", "t", "--table-only"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    tables = done.stdout.split("\nloso-t-SPEAKER")
    assert [t.splitlines()[0] for t in tables[1:]] == [": 3 of 5 speakers", "-aat-int8: 2 of 5 speakers"]
    assert "| mean of 3 | | | | | greedy_search (epoch-1-avg-1) | test | 14.00 |" in tables[1]
    assert "| mean of 2 | | | | | greedy_search (epoch-1-avg-1) | test | 14.50 |" in tables[2]
    # --speakers: the tables (and runs) of those speakers only.
    done = subprocess.run(["bash", str(recipe / "local/run_loso.sh"), "--tag", "t", "--speakers", "george theo",
                           "--table-only"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    tables = done.stdout.split("\nloso-t-SPEAKER")
    assert [t.splitlines()[0] for t in tables[1:]] == [": 2 of 2 speakers", "-aat-int8: 2 of 2 speakers"]
    assert "| mean of 2 | | | | | greedy_search (epoch-1-avg-1) | test | 13.00 |" in tables[1]
    assert "| mean of 2 | | | | | greedy_search (epoch-1-avg-1) | test | 14.50 |" in tables[2]


def test_results_table_lists_pytorch_and_runtime_decodes(tmp_path):
    exp = tmp_path / "exp" / "fp32"
    summaries = {
        exp / "greedy_search" / "wer-summary-test-epoch-8-avg-2.txt": "greedy_search\t1.23",
        exp / "sherpa-onnx" / "greedy_search" / "wer-summary-test-int8-qat-chunk-2.txt": "greedy_search\t1.30",
        exp / "streaming" / "greedy_search" / "wer-summary-test-epoch-8-avg-2-chunk-2.txt": "greedy_search\t1.23",
    }
    for path, row in summaries.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"settings\tWER\n{row}\n")
    (exp / "sherpa-onnx" / "greedy_search" / "stats-test-int8-qat-chunk-2.json").write_text('{"model_bytes": 1234567}')
    # PyTorch streaming's figures (RTF, latency) have no model files of their own.
    (exp / "streaming" / "greedy_search" / "stats-test-epoch-8-avg-2-chunk-2.json").write_text('{"rtf": 0.001}')
    done = subprocess.run([sys.executable, str(REPO / "local/results_table.py"), "--exp-dir", str(exp)],
                          capture_output=True, text=True, check=True)
    rows = [line for line in done.stdout.splitlines() if line.startswith("| fp32 ")]
    assert len(rows) == 3
    assert "| greedy_search (epoch-8-avg-2) | test | 1.23 |" in rows[0]
    assert "| 1,234,567 (model files) | sherpa-onnx greedy_search (int8-qat-chunk-2) | test | 1.30 |" in rows[1]
    assert "| ? | streaming greedy_search (epoch-8-avg-2-chunk-2) | test | 1.23 |" in rows[2]


def test_stage_7_nna_runs_build_checked_integer_models(tiny_data, small_checkpoint, tmp_path):
    """``--nna-runs``: the post-training integer model of a spec and AAT through it (alone and with
    s8bqat weights), each decoded by the emulation and by the integer engine, which must agree,
    and written as the NNA side-car; stage 9 lists them with the side-car's weight bytes."""
    fbank = tmp_path / "data/fbank"
    fbank.mkdir(parents=True)
    for part, manifest in (("train", tiny_data.train), ("dev", tiny_data.dev)):
        shutil.copy(manifest, fbank / f"fsdd_cuts_{part}.jsonl.gz")
    (tmp_path / "data/lang_bpe_32").mkdir()
    shutil.copy(tiny_data.bpe_model, tmp_path / "data/lang_bpe_32/bpe.model")
    (tmp_path / "exp/fp32").mkdir(parents=True)
    shutil.copy(small_checkpoint, tmp_path / "exp/fp32/pretrained.pt")
    shutil.copytree(NNA_CONF, tmp_path / "conf/nna")
    common = ["--parts", "train dev", "--speed-perturb", "", "--quant-runs", "", "--nna-runs",
              "int8 int8+s8bqat:3", "--decode-methods", "greedy_search", "--max-duration", "60"]
    done = run([*common, "--stage", "7", "--stop-stage", "7"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    exps = ("fp32-nna-int8", "fp32-aat-int8", "fp32-aat-int8-s8bqat-3bit")
    for exp in exps:
        assert (tmp_path / "exp" / exp / "model.nna.npz").is_file(), exp
    agreed = re.findall(r"(\w+): integer engine and emulated model give the same hypothesis on (\d+) of (\d+)",
                        done.stdout)
    assert agreed == [("dev", "24", "24")] * len(exps)
    assert not (tmp_path / "exp/fp32-nna-int8/epoch-1.pt").exists()  # post-training: nothing trained
    assert load_model([tmp_path / "exp/fp32-nna-int8/pretrained.pt"]).nna_spec is not None  # converted once, reused
    assert (tmp_path / "exp/fp32-aat-int8-s8bqat-3bit/centroids.pt").is_file()
    done = run([*common, "--stage", "9", "--stop-stage", "9"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    size = read_weight_size(tmp_path / "exp/fp32-aat-int8-s8bqat-3bit/model.nna.size.json")
    rows = [line for line in done.stdout.splitlines() if line.startswith("| fp32-aat-int8-s8bqat-3bit ")]
    assert len(rows) == 2  # emulated and integer
    assert all(f"| {size.index_bits:.2f} | {size.stored_bytes:,} |" in row for row in rows)
    assert size.stored_bytes < size.count
    post_training = [line for line in done.stdout.splitlines() if line.startswith("| fp32-nna-int8 ")]
    assert any("(pretrained-blank-penalty-1-integer) | dev |" in row for row in post_training), post_training
    assert any("(epoch-1-avg-1-blank-penalty-1-integer) | dev |" in row for row in rows)
    assert any("(epoch-1-avg-1-blank-penalty-1) | dev |" in row for row in rows)


@pytest.mark.slow
def test_fsdd_recipe_runs_every_stage_end_to_end(tmp_path):
    """``run.sh --corpus fsdd`` (what ``egs/fsdd/run.sh`` runs) from the corpus archive to the
    results table, as the main job runs it but on a tiny budget: every stage's script; stage 7 with
    post-training int8, 2-bit s8bqat and the int8 NNA (post-training and AAT); sherpa-onnx; the
    table with every model in it. A rerun of stages 0-5 redoes no training."""
    recipe = tmp_path / "egs/fsdd"
    recipe.mkdir(parents=True)
    shutil.copytree(FSDD_RECIPE / "local", recipe / "local")
    shutil.copytree(FSDD_CONF, recipe / "conf")
    (recipe / "conf/model-tiny.yaml").write_text(
        yaml.safe_dump(shrunk_default_model(hidden_size=96, num_layers=1, decoder_dim=32)))
    common = ["--corpus", "fsdd", "--local-tarball", str(FSDD_TARBALL), "--parts", "train dev test",
              "--num-train", "60", "--num-dev", "12", "--num-test", "12", "--speed-perturb", "",
              "--model-config", "conf/model-tiny.yaml", "--num-epochs", "1", "--avg", "1", "--max-duration", "60",
              "--quant-runs", "ptq:8 s8bqat:2", "--nna-runs", "int8"]
    done = run(common, recipe)
    assert done.returncode == 0, done.stderr[-3000:]

    exp = recipe / "exp"
    for path in ("fp32/epoch-1.pt", "fp32/onnx/encoder.onnx", "fp32/onnx/encoder.int8.onnx", "fp32/wer-vs-bytes.png",
                 "fp32-ptq-8bit/model.pack", "fp32-s8bqat-2bit/centroids.pt", "fp32-s8bqat-2bit/model.pack",
                 "fp32-s8bqat-2bit/weights.png", "fp32-s8bqat-2bit/onnx/encoder.int8-qat.onnx",
                 "fp32-nna-int8/model.nna.npz", "fp32-aat-int8/model.nna.npz"):
        assert (exp / path).is_file(), path
    assert read_weight_size(exp / "fp32-s8bqat-2bit/model.size.json").index_bits == 2.0
    agreed = re.findall(r"(\w+): integer engine and emulated model give the same hypothesis on (\d+) of (\d+)",
                        done.stdout)
    assert agreed == [("dev", "12", "12"), ("test", "12", "12")] * 2  # post-training and AAT

    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| fp32")]
    listed = {(row[0].strip("| "), row[5].split(" (")[0], row[6]) for row in rows}
    for part in ("dev", "test"):
        for experiment, method in (("fp32", "greedy_search"), ("fp32", "modified_beam_search"),
                                   ("fp32", "sherpa-onnx greedy_search"), ("fp32-ptq-8bit", "greedy_search"),
                                   ("fp32-s8bqat-2bit", "modified_beam_search"),
                                   ("fp32-s8bqat-2bit", "sherpa-onnx greedy_search"),
                                   ("fp32-nna-int8", "greedy_search"), ("fp32-aat-int8", "greedy_search")):
            assert (experiment, method, part) in listed, (experiment, method, part)

    trained = (exp / "fp32/epoch-1.pt").stat().st_mtime_ns
    done = run([*common, "--stop-stage", "5"], recipe)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training already done" in done.stderr
    assert (exp / "fp32/epoch-1.pt").stat().st_mtime_ns == trained
