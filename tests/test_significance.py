"""Paired bootstrap of WER differences (nnaqat.decode.significance, local/compare_wer.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nnaqat.decode.significance import bootstrap_over_trainings, paired_bootstrap, utterance_errors
from nnaqat.decode.wer import write_recogs
from repo_paths import REPO


def decoding(*utterances):
    """``(id, ref, hyp)`` results from ``(id, "ref words", "hyp words")``."""
    return [(cut_id, ref.split(), hyp.split()) for cut_id, ref, hyp in utterances]


A = decoding(("u1", "one two", "one three"), ("u2", "five", "five"))
B = decoding(("u1", "one two", "one two"), ("u2", "five", "nine"))


def test_utterance_errors_counts_edits_per_utterance():
    assert utterance_errors(A, B).tolist() == [[1, 0, 2], [0, 1, 1]]
    assert utterance_errors(decoding(("u", "a b c", "a c c d")), decoding(("u", "a b c", ""))).tolist() == [[2, 3, 3]]


def test_matches_the_exact_bootstrap_distribution():
    # Two utterances drawn twice: (u1, u1) with probability 1/4 has B better (0 % against 50 %),
    # (u2, u2) with 1/4 has A better (0 % against 100 %), one of each (1/2) ties at 1/3 each.
    result = paired_bootstrap([(A, B)], resamples=100_000, seed=1)
    assert result.wer_a == pytest.approx(100 / 3) and result.wer_b == pytest.approx(100 / 3)
    assert result.delta == pytest.approx(0.0)
    assert result.prob_b_better == pytest.approx(0.25, abs=0.01)
    assert result.prob_a_better == pytest.approx(0.25, abs=0.01)
    assert (result.low, result.high) == (pytest.approx(-50.0), pytest.approx(100.0))
    assert result.utterances == 2 and result.resamples == 100_000


def test_identical_decodings_never_differ():
    result = paired_bootstrap([(A, list(reversed(A)))], resamples=500)
    assert (result.delta, result.low, result.high, result.prob_b_better, result.prob_a_better) == (0, 0, 0, 0, 0)


def test_a_consistent_gain_is_certain_and_its_interval_excludes_zero():
    ids = [f"u{i:03d}" for i in range(200)]
    a = decoding(*[(i, "one two three", "one two eight" if n % 4 == 0 else "one two three") for n, i in enumerate(ids)])
    b = decoding(*[(i, "one two three", "one two three") for i in ids])
    result = paired_bootstrap([(a, b)], resamples=2_000)
    assert result.wer_a == pytest.approx(100 * 50 / 600) and result.wer_b == 0
    assert result.prob_b_better == 1.0 and result.low <= result.delta < result.high < 0


def test_several_sets_compare_the_mean_of_their_wers():
    other_a = decoding(("v1", "seven", "seven"), ("v2", "eight eight", "eight"))
    other_b = decoding(("v1", "seven", "seven"), ("v2", "eight eight", "eight eight"))
    result = paired_bootstrap([(A, B), (other_a, other_b)], resamples=2_000, seed=3)
    wer_a, wer_b = (100 / 3 + 100 / 3) / 2, (100 / 3 + 0) / 2
    assert (result.wer_a, result.wer_b) == (pytest.approx(wer_a), pytest.approx(wer_b))
    assert result.low <= result.delta <= result.high and result.utterances == 4
    # The same seed gives the same resamples.
    assert paired_bootstrap([(A, B), (other_a, other_b)], resamples=2_000, seed=3) == result


def three_word_decoding(wrong_every: int, utterances: int = 200):
    """``utterances`` of "one two three", the last word wrong in every ``wrong_every``-th (0: none)."""
    return decoding(*[(f"u{n:03d}", "one two three", "one two eight" if wrong_every and n % wrong_every == 0
                       else "one two three") for n in range(utterances)])


def test_trainings_that_disagree_widen_the_interval():
    # A's two trainings agree (WER 8.33); B's make no errors and twice A's: B's mean equals A's.
    a_runs = [three_word_decoding(4), three_word_decoding(4)]
    b_runs = [three_word_decoding(0), three_word_decoding(2)]
    result = bootstrap_over_trainings([(a_runs, b_runs)], resamples=4_000, seed=5)
    assert (result.wer_a, result.wer_b) == (pytest.approx(100 * 50 / 600), pytest.approx(100 * 50 / 600))
    assert result.delta == pytest.approx(0.0) and result.utterances == 200
    # Drawing B's better training twice (1 in 4) makes B clearly better, its worse one twice clearly
    # worse, so neither system wins in more than the other quarter's complement.
    assert result.low < -6 and result.high > 6
    assert 0.22 < result.prob_b_better < 0.78 and 0.22 < result.prob_a_better < 0.78
    # Either training of B alone, against A's, is certain of its sign: test-set noise alone is narrow.
    for b, sign in ((b_runs[0], -1), (b_runs[1], 1)):
        alone = paired_bootstrap([(a_runs[0], b)], resamples=2_000)
        assert sign * alone.low > 0 and sign * alone.high > 0


def test_trainings_of_one_set_must_decode_the_same_utterances():
    with pytest.raises(ValueError, match="speaker-x: the two decodings cover different utterances"):
        bootstrap_over_trainings([([A, A], [B, B[:1]])], names=["speaker-x"])
    with pytest.raises(ValueError, match="set 1: no decodings for B"):
        bootstrap_over_trainings([([A], [])])


def test_mismatched_decodings_are_named():
    with pytest.raises(ValueError, match="speaker-x: the two decodings cover different utterances"):
        paired_bootstrap([(A, B[:1])], names=["speaker-x"])
    with pytest.raises(ValueError, match="set 1: u2: the references differ"):
        paired_bootstrap([(A, decoding(("u1", "one two", ""), ("u2", "six", "six")))])
    with pytest.raises(ValueError, match=r"occur twice in one decoding: \['u1'\]"):
        paired_bootstrap([(A + A[:1], B + B[:1])])
    with pytest.raises(ValueError, match="no utterances"):
        paired_bootstrap([([], [])])
    with pytest.raises(ValueError, match="no test sets"):
        paired_bootstrap([])


COMPARE = [sys.executable, str(REPO / "local/compare_wer.py"), "--resamples", "1000"]


def write_decodings(folder, runs):
    """Writes each named decoding as ``folder/NAME/recogs-test-epoch-1.txt``; returns the paths by name."""
    paths = {}
    for name, results in runs.items():
        path = folder / name / "recogs-test-epoch-1.txt"
        path.parent.mkdir()
        write_recogs(path, results)
        paths[name] = str(path)
    return paths


def test_compare_script_prints_each_set_and_the_mean(tmp_path):
    files = list(write_decodings(tmp_path, {"a1": A, "a2": A, "b1": B, "b2": A}).values())
    out = subprocess.run(COMPARE + ["--a", *files[:2], "--b", *files[2:]], check=True, capture_output=True, text=True)
    rows = out.stdout.splitlines()
    assert rows[0].startswith("| set | utterances | WER A | WER B | B - A | 95 % interval |")
    assert rows[2].startswith(f"| {tmp_path.name} test | 2 | 33.33 | 33.33 | +0.00 |")
    assert rows[3].startswith(f"| {tmp_path.name} test | 2 | 33.33 | 33.33 | +0.00 | [+0.00, +0.00] | 0.000 | 0.000 |")
    assert rows[4].startswith("| mean | 4 | 33.33 | 33.33 | +0.00 |")
    unpaired = subprocess.run(COMPARE + ["--a", files[0], "--b", *files[2:]], capture_output=True, text=True)
    assert unpaired.returncode == 1 and "1 files for A but 2 for B" in unpaired.stderr


def test_compare_script_averages_the_trainings_of_each_set(tmp_path):
    files = write_decodings(tmp_path, {"a-seed1": A, "a-seed2": A, "b-seed1": B, "b-seed2": A})
    script = COMPARE + ["--trainings", "2"]
    out = subprocess.run(script + ["--a", files["a-seed1"], files["a-seed2"], "--b", files["b-seed1"], files["b-seed2"]],
                         check=True, capture_output=True, text=True)
    rows = out.stdout.splitlines()
    assert len(rows) == 3  # header, rule, one set: no mean row
    assert rows[2].startswith(f"| {tmp_path.name} test | 2 | 33.33 | 33.33 | +0.00 |")
    odd = subprocess.run(script + ["--a", *list(files.values())[:3], "--b", *list(files.values())[:3]],
                         capture_output=True, text=True)
    assert odd.returncode == 1 and "3 files per system do not make sets of --trainings 2" in odd.stderr


def test_compare_script_takes_one_training_count_per_set(tmp_path):
    # Set 1: two trainings per system (A's WER 33.33, B's 33.33); set 2: one each (A 33.33, B 0).
    perfect = decoding(("u1", "one two", "one two"), ("u2", "five", "five"))
    runs = {"s1-a1": A, "s1-a2": A, "s2-a": A, "s1-b1": B, "s1-b2": A, "s2-b": perfect}
    files = list(write_decodings(tmp_path, runs).values())
    script = COMPARE + ["--trainings", "2", "1"]
    out = subprocess.run(script + ["--names", "set-1", "set-2", "--a", *files[:3], "--b", *files[3:]],
                         check=True, capture_output=True, text=True)
    rows = out.stdout.splitlines()
    assert rows[2].startswith("| set-1 | 2 | 33.33 | 33.33 | +0.00 |")
    assert rows[3].startswith("| set-2 | 2 | 33.33 | 0.00 | -33.33 |")
    assert rows[4].startswith("| mean | 4 | 33.33 | 16.67 | -16.67 |")
    short = subprocess.run(script[:-2] + ["2", "2", "--a", *files[:3], "--b", *files[3:]],
                           capture_output=True, text=True)
    assert short.returncode == 1 and "--trainings 2 2 adds up to 4, not the 3 files per system" in short.stderr
