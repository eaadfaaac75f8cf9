"""The stage driver: option parsing and the generic-manifest path through stages 2-4."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lhotse import RecordingSet, SupervisionSet, load_manifest

REPO = Path(__file__).resolve().parents[1]


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
