"""``picscale lab``: the real engines of each stage of the scaling path on one machine,
run by supervisord, with all their state under one directory."""
