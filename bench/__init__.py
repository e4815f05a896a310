"""triopool's benchmark suite: ``nox -s bench`` (or ``python -m bench``).

It measures triopool and its peers in the same run, interleaved, and reports
medians and ratios; see ``docs/performance.rst`` for the method.
"""
