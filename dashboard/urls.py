from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path

from dashboard.alerts.api import router as alerts_api
from dashboard.core import views
from dashboard.core.api import api
from dashboard.core.mlflow.views import dispatch as mlflow_dispatch

# The project wires its apps together: core's API, then what alerts (built on core) adds.
api.add_router("/", alerts_api)

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("accounts/login/", auth_views.LoginView.as_view(template_name="login.html"), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    # MLflow's tracking API (its clients' MLFLOW_TRACKING_URI); its other services under
    # /api/ (artifacts, v3 traces and models) answer MLflow's ENDPOINT_NOT_FOUND there too.
    re_path(
        r"^api/(?P<api>[0-9.]+/mlflow(?:-artifacts)?)/(?P<endpoint>.*)$",
        mlflow_dispatch,
        name="mlflow",
    ),
    path("api/", api.urls),
    path("", views.home, name="home"),
    path("p/<slug:slug>/", views.project_dashboard, name="project"),
    path("p/<slug:slug>/tokens/", views.tokens, name="tokens"),
    path("p/<slug:slug>/tokens/<int:token_id>/revoke", views.revoke_token, name="revoke_token"),
    path("p/<slug:slug>/compare/", views.compare, name="compare"),
    path("p/<slug:slug>/new/<str:kind>/", views.new_job, name="new_job"),
    path("runs/<int:run_id>/", views.run_detail, name="run"),
    path("jobs/<int:job_id>/", views.job_detail, name="job"),
    path("", include("dashboard.alerts.urls")),
]
