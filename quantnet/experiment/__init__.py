"""`quantnet experiment`: the QuantNet paper's evaluation (Table 1, statistical tests, figures) on any
multi-market data set, on one dated held-out window."""
