"""Apache Airflow provider for the Kling v1.6 effects video models served by the AI/ML API.

Kept import-free on purpose: the DAG processor imports DAG files constantly, and importing this
package must not pull in HTTP clients or Airflow's runtime.
"""

__version__ = "0.3.0"
