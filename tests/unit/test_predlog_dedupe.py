"""Counting a retried request once: the same request id logged again within a minute is the same
request (a balancer's retry on another replica); an id a client reuses later is a new request."""

import numpy as np

from shipyard.monitor.predlog import DEDUPE_SPAN_S, first_of_each


def test_a_retry_within_the_span_is_counted_once() -> None:
    ids = ["a", "b", "a", "c"]
    ts = np.array([100.0, 100.5, 101.2, 102.0])
    assert first_of_each(ids, ts).tolist() == [True, True, False, True]


def test_a_reused_id_later_is_a_new_request() -> None:
    ids = ["1", "1", "1"]
    ts = np.array([0.0, DEDUPE_SPAN_S + 1, DEDUPE_SPAN_S + 2])
    assert first_of_each(ids, ts).tolist() == [True, True, False]


def test_out_of_order_rows_keep_the_earliest() -> None:
    assert first_of_each(["x", "x"], np.array([10.0, 9.0])).tolist() == [False, True]


def test_unique_ids_keep_everything() -> None:
    assert first_of_each(["a", "b"], np.array([1.0, 1.0])).all()
