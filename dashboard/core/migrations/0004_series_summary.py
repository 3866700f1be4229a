import django.db.models.deletion
from django.db import migrations, models

# The summary of the points stored before it existed (levels 6, 10: dashboard.core.summary).
_FINITE = "value NOT IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8)"
BACKFILL = f"""
INSERT INTO core_seriessummary
    (run_id, key, level, bucket, n, min_step, min_value, max_step, max_value)
SELECT run_id, key, l.level, step >> l.level, count(*),
       (array_agg(step ORDER BY value) FILTER (WHERE {_FINITE}))[1],
       min(value) FILTER (WHERE {_FINITE}),
       (array_agg(step ORDER BY value DESC) FILTER (WHERE {_FINITE}))[1],
       max(value) FILTER (WHERE {_FINITE})
FROM core_metricpoint CROSS JOIN (VALUES (6), (10)) AS l(level)
GROUP BY run_id, key, l.level, step >> l.level
"""


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0003_mlflow"),
    ]

    operations = [
        migrations.CreateModel(
            name="SeriesSummary",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("key", models.CharField(max_length=128)),
                ("level", models.SmallIntegerField()),
                ("bucket", models.BigIntegerField()),
                ("n", models.IntegerField()),
                ("min_step", models.BigIntegerField(null=True)),
                ("min_value", models.FloatField(null=True)),
                ("max_step", models.BigIntegerField(null=True)),
                ("max_value", models.FloatField(null=True)),
                (
                    "run",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="core.run",
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(
                        fields=("run", "key", "level", "bucket"), name="unique_summary_bucket"
                    )
                ],
            },
        ),
        migrations.RunSQL(BACKFILL, migrations.RunSQL.noop),
    ]
