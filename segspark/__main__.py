from segspark.cli import main

raise SystemExit(main())
