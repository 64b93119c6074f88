"""The job's two inputs, side by side, each with the same shape.

    parquet.py      Parquet files: ``scan_parquet`` (footers) and ``ReadParquetRowGroups``
    datarecord.py   DataRecord TFRecord / block files: ``scan_datarecord`` (first record of
                    each file) and ``ReadDataRecords``

The scan runs in the launcher before anything starts and returns an ``InputScan`` (``base``):
the files, the columns read, and the ``InputReader`` that the pipeline applies to the file paths.
Every reader gives a ``ReadResult``: tables of rows tagged with their place in the input, rows
rejected while reading, rows counted while reading and unreadable parts of files, so the job
assembles the same steps whatever the input format.
"""
