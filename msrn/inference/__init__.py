"""Using a trained model: the `Predictor` (`predictor`), the shared command options (`args`), the
`predict`, `export` and `serve` commands (the page in `static/`), attention maps (`explain`) and their
pictures (`draw`, the only one here that needs matplotlib), and tagging without torch (`tagging`,
`onnx_predict`). Importing this package imports nothing, so the torch-free modules stay so."""
