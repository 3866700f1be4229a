from django.urls import path, re_path

from dashboard.core import consumers

websocket_urlpatterns = [
    path("ws/runs/<int:run_id>/", consumers.RunConsumer.as_asgi()),
    path("ws/jobs/<int:job_id>/", consumers.JobConsumer.as_asgi()),
    path("ws/projects/<int:project_id>/", consumers.ProjectConsumer.as_asgi()),
    re_path(r"", consumers.NotFoundConsumer.as_asgi()),  # else channels answers HTTP 500
]
