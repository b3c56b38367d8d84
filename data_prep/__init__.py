"""Data preparation: turns IUGC CSVs, PSFHS-style masks or a synthetic phantom into one TFDS format.

Entry point: `python -m data_prep.build`; library: `data_prep.build.build_dataset`. Every source
yields `aop_tf.io.records.Record`s (or `InputError`s for inputs it had to refuse) that
`data_prep.tfds_builder` writes with the feature schema of ARCHITECTURE.md ("Data on disk").
`data_prep` builds on `aop_tf` (its image and label readers, `aop_tf.io`, and the geometry); `aop_tf`
never imports `data_prep`.
"""
