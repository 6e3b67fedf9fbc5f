"""What a run leaves: the run directory's records (rundir.py), report.json's typed contents and exit-code policy
(report.py), the CI gate files (gate.py) and report.html (html.py)."""
