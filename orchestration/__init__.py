"""Production operation of the two jobs on Google Cloud: the daily recommendation schedule
(Cloud Scheduler → Workflows → the recommend Flex Template, then the data-quality and drift
queries) and the command that deploys it (``python -m orchestration.deploy``).

Not part of the installed package: it runs from a checkout, on the machine that deploys.
"""
