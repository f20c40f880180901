"""The training-step benchmark's token counts (the FLOP floor's N and R) follow what ``ppo_update`` forwards."""

from onelayer.benchmarks.train_step import forwarded_tokens
from onelayer.training.rows import Row


def _group(prompt, lengths, adv):
    return [Row(list(prompt), [7] * n, adv) for n in lengths]


def test_prompts_count_once_per_micro_batch_and_silent_micro_batches_not_at_all():
    a = _group(range(10), [3, 4], 0.5)  # prompt 10, responses 3 + 4
    b = _group(range(5), [2, 2], 0.0)  # a silent group
    c = _group(range(10), [1, 1], -0.5)  # a's prompt again, in another micro-batch
    rows = a + b + c
    assert forwarded_tokens(rows, True, 2, skip_silent=True) == (10 + 7 + 10 + 2, 7 + 2)
    assert forwarded_tokens(rows, True, 2, skip_silent=False) == (10 + 7 + 5 + 4 + 10 + 2, 7 + 4 + 2)
    assert forwarded_tokens(rows, False, 2, skip_silent=False) == (20 + 7 + 10 + 4 + 20 + 2, 7 + 4 + 2)
    # one micro-batch holding a silent row and a live one runs whole
    assert forwarded_tokens(rows, True, 6, skip_silent=True) == (10 + 7 + 5 + 4 + 2, 7 + 4 + 2)


def test_score_rows_count_the_prompt_and_every_candidate():
    rows = [Row([1, 2, 3], [9], 1.0, candidates=[[9], [8, 8], [7, 7, 7]], choice=0),
            Row([1, 2], [8, 8], 0.0, candidates=[[8, 8]], choice=0)]
    assert forwarded_tokens(rows, True, 1, skip_silent=True) == (3 + 6, 6)
    assert forwarded_tokens(rows, True, 1, skip_silent=False) == (3 + 6 + 2 + 2, 6 + 2)
