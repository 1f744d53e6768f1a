"""Production operation of the two jobs on Google Cloud: the daily recommendation schedule
(Cloud Scheduler → Workflows → the recommend Flex Template, then the data-quality and drift
queries), the optional training schedule (→ the train Flex Template, then publishing the
model the daily runs score with) and the command that deploys them (``python -m orchestration.deploy``).

Not part of the installed package: it runs from a checkout, on the machine that deploys.
"""
