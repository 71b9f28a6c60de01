"""Model cascades without a server: temperature calibration, confidence routing, threshold tuning, cascade.json."""
