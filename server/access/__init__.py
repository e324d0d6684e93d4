"""Access control: S2's access tokens (`tokens`), what each may do (`scope`), and the
`StreamStore` as one caller may use it (`scoped_store`)."""
