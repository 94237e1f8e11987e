"""Which train questions phase 1 gathers on: file order after an offset, or one random draw across
all the split's databases (``gather.sample_seed``), the society's tasks and the juniors-only ones
disjoint. Real bundled Spider train split; no model is started."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from training.profile import TrainConfig  # noqa: E402
from training.run_questions import gather_tasks  # noqa: E402


def _tasks(**gather):
    cfg = TrainConfig.load("smoke")
    return gather_tasks(cfg.model_copy(update={"gather": cfg.gather.model_copy(update=gather)}))


def test_file_order_by_default_and_a_draw_across_databases_with_a_seed(tmp_path):
    tasks, jtasks = _tasks(limit=20, junior_limit=200, offset=5)
    idx = [t.index for t in tasks + jtasks]
    assert len(tasks) == 20 and len(jtasks) == 200 and idx == sorted(set(idx)) and idx[0] >= 5  # file order
    first_order_dbs = {t.db_id for t in tasks + jtasks}

    a, ja = _tasks(limit=20, junior_limit=200, sample_seed=0)
    b, jb = _tasks(limit=20, junior_limit=200, sample_seed=0)
    c, _ = _tasks(limit=20, junior_limit=200, sample_seed=1)
    assert [t.id for t in a + ja] == [t.id for t in b + jb]  # the same seed draws the same questions
    assert [t.id for t in a] != [t.id for t in c]
    assert len(a) == 20 and len(ja) == 200 and not {t.id for t in a} & {t.id for t in ja}
    drawn_dbs = {t.db_id for t in a + ja}
    # 220 questions in file order cover a handful of databases; drawn at random they cover most of the 138
    assert len(first_order_dbs) <= 6 and len(drawn_dbs) >= 60, (len(first_order_dbs), len(drawn_dbs))
    # each part in the split's order, so questions over one database stay together
    index = {t.id: t.index for t in a + ja}
    assert [index[t.id] for t in ja] == sorted(index[t.id] for t in ja)
