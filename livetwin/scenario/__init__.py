"""What-if scenarios: a request's inputs as series, the forward run of a fork of calibrated twins
(the calibration's own filter with no measurements), and the type's derived values and rules on
the forecast. Pure except `store` (the scenario service's tables); the job is jobs/scenario.py.
"""
