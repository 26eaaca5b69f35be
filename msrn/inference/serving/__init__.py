"""`msrn serve`'s parts, by job: `routes` (the Flask app), `batching` (admission, the pixel budget and the
batching thread) and `lifecycle` (waitress, SIGTERM draining, the allocator); msrn.inference.serve is the
command that puts them together."""
