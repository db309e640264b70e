"""Dataset mode: the per-scene summaries, consistency and epipolar scores over many scenes.

``inputs`` finds the scenes (a folder of scene folders, or a manifest), ``job`` runs one scene
(one forward pass, then the analysis into table rows), ``store`` owns the output folder (atomic
per-scene files, resume, failures.jsonl), ``engines`` runs the jobs in-process or on Ray Data,
``aggregate`` makes the dataset table and its markdown, ``progress`` reports scenes/s and the
ETA, and ``study`` ties them together.
"""
