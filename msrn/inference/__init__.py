"""Using a trained model: the `Predictor` (`predictor`), the shared command options (`args`), the
`predict`, `export` and `serve` commands, attention pictures (`explain`), and tagging without torch
(`tagging`, `onnx_predict`). Importing this package imports nothing, so the torch-free modules stay so."""
