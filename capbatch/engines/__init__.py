"""The engines that run the caption job (capbatch.job): `local` (this process)
and `ray` (Ray Data). Each only schedules; rows, resume and guards are the job's."""
