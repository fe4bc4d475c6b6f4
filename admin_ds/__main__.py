from admin_ds.cli import main

raise SystemExit(main())
