"""The stage driver: option parsing and the generic-manifest path through stages 2-4."""

from __future__ import annotations

import subprocess
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
