"""Shared test set-up: no test sees, or writes to, the weights folder of the user running the tests."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def own_user_weights(tmp_path_factory):
    # an environment variable, not a patch: the tests' subprocesses inherit it
    previous = os.environ.get("CLASSSR_USER_WEIGHTS")
    os.environ["CLASSSR_USER_WEIGHTS"] = str(tmp_path_factory.mktemp("user-weights"))
    yield
    if previous is None:
        del os.environ["CLASSSR_USER_WEIGHTS"]
    else:
        os.environ["CLASSSR_USER_WEIGHTS"] = previous
