"""The two roles: viewers see everything and change nothing; supervisors act on sessions."""

from django.db import migrations


def create_roles(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    app_config = apps.get_app_config("coordination")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    view = Permission.objects.get(
        content_type__app_label="coordination", codename="view_auditentry"
    )
    intervene = Permission.objects.get(content_type__app_label="coordination", codename="intervene")
    viewers, _ = Group.objects.get_or_create(name="viewers")
    viewers.permissions.add(view)
    supervisors, _ = Group.objects.get_or_create(name="supervisors")
    supervisors.permissions.add(view, intervene)


def remove_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=["viewers", "supervisors"]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("coordination", "0001_audit_entry"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(create_roles, remove_roles)]
