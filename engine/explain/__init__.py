"""Seeing inside a trained model: class-activation heatmaps (Grad-CAM, with Captum), a layer's strongest
channels, the evaluation's mistakes and a label audit, and a self-contained HTML report of them."""
