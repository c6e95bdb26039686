"""The Ray Data graph of a run, by concern (raypipe/run.py puts it together):

    count:   read ─▶ validate ─▶ rows per route (a pool, "rejected" or "skip"): counts only
    then one streaming execution (or one per wave, waves.py), a branch per pool: a kind's, and for
    its rows with sp_degree N > 1 the kind's pool of gangs "K/spN" (CPU actors driving gangs):

    read ─▶ kind K ─▶ validate ─▶ load inputs (CPU) ─▶ K's pool ─▶ write videos (CPU) ─┐
    read ─▶ kind L ─▶ validate ─▶ load inputs (CPU) ─▶ L's pool ─▶ write videos (CPU) ─┼─▶ driver:
    read ─▶ no pool for its kind ─▶ validate ─▶ rejected metadata ─────────────────────┘  metadata parts

- ray_init.py  connecting to (or starting) Ray, Ray Data's settings for streaming;
- records.py   what travels between the stages: the manifest records' columns, and one codec
               (`pack` / `unpack`) for every Python object that crosses a stage (the validated
               row, its decoded inputs, its Metadata record, its frames);
- batches.py   the CPU batch functions (read, validate, load inputs, rejected metadata, tallies);
- actors.py    the pool actor (StageActor) and the per-row death count (RowAttempts);
- waves.py     what each pool holds, which pools run at the same time;
- graph.py     the datasets: the read, the validated records, one branch per pool, the others.

In a run's execution a row is validated once, in its branch, and packed with it from there on:
the later stages unpack it without validating again. The count pass before it validates too,
keeping nothing but counts: only pools with valid rows start (a pool reserves GPUs and loads a
model, or drives gangs that do), sized by their valid rows.
"""
