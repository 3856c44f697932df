"""Hypothesis settings of the property tests.

CI runs the ``ci`` profile: derandomized (the same examples on every run, so a failure reproduces and CI time is
fixed), no deadline (the Triton interpreter and a loaded machine make single examples slow), no example database
written, no explain phase. Each test sets its own ``max_examples`` (see ``strategies.examples``). For a longer,
randomized hunt::

    ADATRITON_HYPOTHESIS_PROFILE=thorough ADATRITON_HYPOTHESIS_SCALE=20 pytest tests/property
"""

import os

from hypothesis import HealthCheck, Phase, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    # no "explain" phase: it reruns a failing case hundreds of times (minutes in the Triton interpreter)
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", parent=settings.get_profile("ci"), derandomize=False)
settings.load_profile(os.environ.get("ADATRITON_HYPOTHESIS_PROFILE", "ci"))
