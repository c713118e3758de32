/* placeholder during bring-up */ typedef int mhub_placeholder_unit;
