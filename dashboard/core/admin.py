from django.contrib import admin

from dashboard.core.models import ApiToken, Job, Membership, Project, PromptSet, Run


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "created")
    prepopulated_fields = {"slug": ("name",)}
    inlines = [MembershipInline]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "user", "project", "created", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "hashed", "last_used_at")


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ("name", "project", "kind", "status", "verdict", "last_step", "created")
    list_filter = ("kind", "status", "project")
    search_fields = ("name",)


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "kind",
        "status",
        "progress",
        "stage",
        "project",
        "worker_host",
        "created",
    )
    list_filter = ("kind", "status")


admin.site.register(PromptSet)
