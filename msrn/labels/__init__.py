"""What the model is told about the labels: the label list, its co-occurrence graph and its label vectors.

`labelset.LabelSet` is the one place the adjacency comes from: `graph` turns co-occurrence counts
into the reweighted adjacency (docs/design.md §2), `wordvec`, `vectors_ngram` and `encoder` give the
label vectors (GloVe/fastText text files, hashed character n-grams, a sentence encoder), and
`reference_files` names and checks the reference's pickles. `report` writes the report (markdown and
two drawings) and runs `msrn labels`. Nothing here builds a model: `msrn.models` takes what this package returns.
"""
