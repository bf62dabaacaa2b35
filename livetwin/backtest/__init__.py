"""Back-testing: a candidate twin type replayed against recorded history beside the recorded
type versions, compared as it goes (see docs/backtesting.md)."""
