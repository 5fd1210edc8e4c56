"""Data in, recommendations out: demo data, metrics (installed as `modeling_missrec.pipelines`)."""
