! The C API from Fortran (iso_c_binding): a pool, an allocation used as a Fortran array of
! doubles through its pointer, its descriptor attached again, and error codes.
module shmpool
  use, intrinsic :: iso_c_binding
  implicit none
  integer(c_int), parameter :: SHMPOOL_OK = 0, SHMPOOL_INVALID_ALLOCATION = -4

  type, bind(c) :: shmpool_allocation
    integer(c_int64_t) :: id_slot, id_generation, offset, size
    integer(c_int8_t) :: alloc_type  ! (types 128-255 read negative here: iand(int(t), 255))
    type(c_ptr) :: ptr
    integer(c_int64_t) :: pool_nonce
  end type

  interface
    integer(c_int) function shmpool_create(name, size, out) bind(c)
      import :: c_int, c_char, c_int64_t, c_ptr
      character(kind=c_char), dimension(*), intent(in) :: name
      integer(c_int64_t), value :: size
      type(c_ptr), intent(out) :: out
    end function
    integer(c_int) function shmpool_alloc(pool, size, out) bind(c)
      import :: c_int, c_int64_t, c_ptr, shmpool_allocation
      type(c_ptr), value :: pool
      integer(c_int64_t), value :: size
      type(shmpool_allocation), intent(out) :: out
    end function
    integer(c_int) function shmpool_free(pool, a) bind(c)
      import :: c_int, c_ptr, shmpool_allocation
      type(c_ptr), value :: pool
      type(shmpool_allocation), intent(in) :: a
    end function
    integer(c_int) function shmpool_alloc_descriptor(pool, a, buf, cap, len) bind(c)
      import :: c_int, c_ptr, c_size_t, c_int8_t, shmpool_allocation
      type(c_ptr), value :: pool
      type(shmpool_allocation), intent(in) :: a
      integer(c_int8_t), dimension(*), intent(out) :: buf
      integer(c_size_t), value :: cap
      integer(c_size_t), intent(out) :: len
    end function
    integer(c_int) function shmpool_attach_alloc(descriptor, len, pool, out) bind(c)
      import :: c_int, c_ptr, c_size_t, c_int8_t, shmpool_allocation
      integer(c_int8_t), dimension(*), intent(in) :: descriptor
      integer(c_size_t), value :: len
      type(c_ptr), intent(out) :: pool
      type(shmpool_allocation), intent(out) :: out
    end function
    integer(c_int) function shmpool_detach(pool) bind(c)
      import :: c_int, c_ptr
      type(c_ptr), value :: pool
    end function
    integer(c_int) function shmpool_destroy(pool) bind(c)
      import :: c_int, c_ptr
      type(c_ptr), value :: pool
    end function
    integer(c_int) function c_getpid() bind(c, name='getpid')
      import :: c_int
    end function
  end interface
end module

program example
  use shmpool
  implicit none
  type(c_ptr) :: pool, other
  type(shmpool_allocation) :: a, same
  real(c_double), pointer :: values(:), seen(:)
  integer(c_int8_t) :: descriptor(128)
  integer(c_size_t) :: length
  character(len=64) :: name
  integer :: i

  write (name, '(a,i0)') 'test-fortran-example-', c_getpid()
  call check(shmpool_create(trim(name)//c_null_char, 4_c_int64_t * 1024 * 1024, pool))
  call check(shmpool_alloc(pool, 100_c_int64_t * 8, a))
  call c_f_pointer(a%ptr, values, [100])
  values = [(real(i, c_double), i = 1, 100)]
  call check(shmpool_alloc_descriptor(pool, a, descriptor, 128_c_size_t, length))
  call check(shmpool_attach_alloc(descriptor, length, other, same))
  call c_f_pointer(same%ptr, seen, [100])
  if (sum(seen) /= 5050.0_c_double) error stop 'the bytes differ'
  print '(a,f7.1,a,i0,a)', 'sum ', sum(seen), ' through a ', length, '-byte descriptor'
  call check(shmpool_free(other, same))
  if (shmpool_free(pool, a) /= SHMPOOL_INVALID_ALLOCATION) error stop 'a double free succeeded'
  call check(shmpool_detach(other))
  call check(shmpool_destroy(pool))
contains
  subroutine check(status)
    integer(c_int), intent(in) :: status
    if (status /= SHMPOOL_OK) then
      print *, 'shmpool status ', status
      error stop 1
    end if
  end subroutine
end program
