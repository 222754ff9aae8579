"""The homeostat: probe math, interventions, calibration math."""
